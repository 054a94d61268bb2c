"""Scaling with work, and scorer memory, measured within one run (this machine is noisy).

At N = 250, 500, 1000, 2000 training images: the training epoch time (Ray Train, 1 worker,
ERM; `time/train_epoch_s` of the second epoch) and the time of one HTL refresh through the
actor pool (K+1 = 4 passes per image). Cost must grow linearly: the script prints the slope
(seconds per 1,000 images), the intercept (fixed cost) and R² of a least-squares line. The peak
resident memory of the scorer actor is sampled from /proc at every N and must not grow with N
(the actor sees one batch at a time).

Memory: peak RSS of a scorer actor ÷ the model's parameter bytes, and the same for the part
the model accounts for (peak RSS minus that of an idle Ray actor that imported torch and smp).

Usage: .venv/bin/python bench/scaling.py [--sizes 250,500,1000,2000] [--size 64]
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch
from _common import PeakRss, init_ray, linear_fit, workdir

from htl_ray.config import ModelConfig, load_config
from htl_ray.data.loading import split_dataset
from htl_ray.data.synth import synthesize
from htl_ray.htl.scorer import ScoringSpec, score_dataset
from htl_ray.models import create_model
from htl_ray.train.trainer import run_training

MODEL = {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "in_channels": 3,
         "decoder_channels": [64, 32, 16, 8, 4]}


class IdleActor:
    """What a scorer actor costs before it builds any model: Ray worker + torch + smp."""

    def __init__(self):
        import segmentation_models_pytorch  # noqa: F401

        torch.set_num_threads(1)

    def ready(self) -> bool:
        return True


def idle_actor_rss() -> int:
    import ray

    with PeakRss("IdleActor") as rss:
        actor = ray.remote(num_cpus=1)(IdleActor).remote()
        ray.get(actor.ready.remote())
        time.sleep(0.5)
        ray.kill(actor)
    return rss.peak


def dataset(root, n_train: int, size: int):
    """A synthetic set with `n_train` training images and small fixed val/test splits."""
    out = root / f"synthetic-{n_train}"
    shutil.rmtree(out, ignore_errors=True)
    n = n_train + 60
    synthesize(out, n=n, size=size, seed=0, fractions=(n_train / n, 40 / n, 20 / n))
    return out


def epoch_time(data, root, n_train: int) -> float:
    from htl_ray.tracking import client as tracking_client

    cfg = load_config(None, [
        f"data.path={data}", f"run.storage_path={root / 'runs'}",
        f"run.name=n{n_train}-{int(time.time())}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "train.epochs=2", "data.batch_size=16", "scaling.num_workers=1",
        "scaling.resources_per_worker={CPU: 1}", "scaling.torch_threads=1"])
    outcome = run_training(cfg)
    history = tracking_client(outcome.tracking_uri).get_metric_history(outcome.mlflow_run_id,
                                                                    "time/train_epoch_s")
    return max(history, key=lambda m: m.step).value


def refresh(data) -> tuple[float, int, int]:
    """(seconds, rows scored, peak RSS of the scorer actor) of one actor-pool refresh."""
    torch.manual_seed(0)
    state = create_model(ModelConfig(**MODEL)).state_dict()
    spec = ScoringSpec(model=MODEL, sparsities=(0.3, 0.5, 0.7), batch_size=32,
                       cpus_per_actor=1.0)
    ds = split_dataset(data, "train")
    with PeakRss("ScorerActor") as rss:
        t0 = time.perf_counter()
        table = score_dataset(ds, state, spec)
        seconds = time.perf_counter() - t0
    return seconds, len(table), rss.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="250,500,1000,2000", help="training-set sizes N")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--skip-training", action="store_true", help="only refresh time and memory")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    root = workdir("scaling")
    init_ray()
    idle = idle_actor_rss()
    params = sum(t.numel() * t.element_size()
                 for t in create_model(ModelConfig(**MODEL)).state_dict().values())
    rows = []
    for n in sizes:
        data = dataset(root, n, args.size)
        r_s, scored, peak = refresh(data)
        e_s = float("nan") if args.skip_training else epoch_time(data, root, n)
        rows.append((n, e_s, r_s, peak))
        print(f"N={n:5d} ({scored} scored): epoch {e_s:7.2f}s  refresh {r_s:7.2f}s  "
              f"scorer peak RSS {peak / 2**20:7.1f} MiB", flush=True)
    ns = [r[0] for r in rows]
    peaks = [r[3] for r in rows]
    r_slope, r_icpt, r_r2 = linear_fit(ns, [r[2] for r in rows])
    m_slope, _, _ = linear_fit(ns, peaks)
    print(f"model: U-Net/ResNet-18, {params / 2**20:.1f} MiB of parameters; images "
          f"{args.size}x{args.size}; idle Ray actor with torch+smp: {idle / 2**20:.0f} MiB")
    if not args.skip_training:
        e_slope, e_icpt, e_r2 = linear_fit(ns, [r[1] for r in rows])
        print(f"epoch time: {e_slope * 1000:.2f} s per 1000 images + {e_icpt:.2f} s, "
              f"R^2 = {e_r2:.4f}  (linear: R^2 close to 1)")
    print(f"refresh time: {r_slope * 1000:.2f} s per 1000 images + {r_icpt:.2f} s fixed, "
          f"R^2 = {r_r2:.4f}  (linear: R^2 close to 1)")
    print(f"scorer peak RSS, largest N / smallest N = {peaks[-1] / peaks[0]:.3f}  "
          f"(slope {m_slope * 1000 / 2**20:+.1f} MiB per 1000 images; must not grow with N)")
    print(f"scorer peak RSS / parameter bytes = {max(peaks) / params:.1f}")
    print(f"(scorer peak RSS - idle actor RSS) / parameter bytes = "
          f"{(max(peaks) - idle) / params:.1f}  (dense + 3 pruned copies + activations)")


if __name__ == "__main__":
    main()
