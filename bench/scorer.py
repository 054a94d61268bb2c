"""Scoring cost, measured as ratios within one run (this machine is noisy).

1. Throughput of the actor-pool scorer (Ray Data map_batches + ActorPoolStrategy) ÷ a plain
   in-process loop doing the same K+1 forward passes (dense + one per sparsity) with the same
   number of threads. Target ≥ 0.8.
2. No redundant work: the time of one refresh's scoring (in process, and through the actor
   pool) ÷ K+1 plain inference passes of the dense model over the same images. Target ≤ 1.1
   in process (pruning, binarising and IoUs are the only extra work).
3. Refresh overhead: wall time of a training run with HTL refresh every epoch ÷ the same run
   with ERM (no refresh), for synchronous and asynchronous refresh.

Usage: .venv/bin/python bench/scorer.py [--n 1000] [--size 128] [--threads 1] [--actors 1]

The default problem is 700 training images at 128×128 scored with 1 CPU on each side (the
scorer's default `htl.scorer_cpus: 1`): a refresh pays a fixed cost (fresh actor processes
import torch and smp), so tiny sets understate the pool; the script prints that fixed cost.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch
from _common import init_ray, workdir

from htl_ray.config import ModelConfig, load_config
from htl_ray.data.loading import decode_batch, split_dataset
from htl_ray.data.schema import read_manifest, read_table
from htl_ray.data.synth import synthesize
from htl_ray.htl.scorer import ScoringSpec, score_dataset, score_in_process
from htl_ray.models import create_model
from htl_ray.train.trainer import run_training

MODEL = {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "in_channels": 3,
         "decoder_channels": [64, 32, 16, 8, 4]}


def scoring_ratio(data, threads: int, repeats: int, actors: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    state = create_model(ModelConfig(**MODEL)).state_dict()
    spec = ScoringSpec(model=MODEL, sparsities=(0.3, 0.5, 0.7), batch_size=32, pool_size=actors,
                       cpus_per_actor=threads / actors)
    rows = read_table(data, columns=["id", "image", "mask", "height", "width"], split="train")
    batch = {c: rows[c].to_numpy() for c in rows.columns}
    ds = split_dataset(data, "train")
    torch.set_num_threads(threads)
    score_in_process(batch, state, spec)          # warm-up (allocator, kernels)
    t_plain, t_pool = [], []
    for _ in range(repeats):                      # interleaved, so drift hits both alike
        t0 = time.perf_counter()
        score_in_process(batch, state, spec)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        score_dataset(ds, state, spec)
        t_pool.append(time.perf_counter() - t0)
    n = len(rows)
    plain, pool = n / min(t_plain), n / min(t_pool)
    return pool / plain, plain, pool


def plain_passes_ratio(data, threads: int, repeats: int) -> tuple[float, float, float, float]:
    """(in-process scoring ÷ K+1 plain passes, pool scoring ÷ K+1 plain passes, seconds of
    K+1 plain passes, seconds of in-process scoring).

    Paired per batch: each batch is run as K+1 plain passes of the dense model and then scored
    (dense + pruned copies, IoUs, loss terms), `repeats` times, and each side keeps its fastest
    time per batch; the pruning itself (once per refresh) is added to the scoring side. Whole
    passes timed one after another drift with the machine by more than the difference."""
    from htl_ray.htl.scorer import build_scoring_models
    from htl_ray.htl.scoring import score_population_batch

    torch.manual_seed(0)
    model = create_model(ModelConfig(**MODEL)).eval()
    state = model.state_dict()
    spec = ScoringSpec(model=MODEL, sparsities=(0.3, 0.5, 0.7), batch_size=32,
                       cpus_per_actor=threads)
    rows = read_table(data, columns=["id", "image", "mask", "height", "width"], split="train")
    batch = {c: rows[c].to_numpy() for c in rows.columns}
    ds = split_dataset(data, "train")
    torch.set_num_threads(threads)
    passes = len(spec.sparsities) + 1
    prune_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dense, pruned = build_scoring_models(spec, state)
        prune_s.append(time.perf_counter() - t0)
    t_plain, t_score = 0.0, 0.0
    for start in range(0, len(rows), spec.batch_size):
        images, masks = decode_batch({k: v[start:start + spec.batch_size]
                                      for k, v in batch.items()})
        plain, scored = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(passes):
                    model(images)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            score_population_batch([(dense, pruned)], images, masks)
            scored.append(time.perf_counter() - t0)
        t_plain += min(plain)
        t_score += min(scored)
    t_scoring = min(prune_s) + t_score
    t_pool = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_dataset(ds, state, spec)
        t_pool.append(time.perf_counter() - t0)
    return t_scoring / t_plain, min(t_pool) / t_plain, t_plain, t_scoring


def refresh_ratio(data, root, epochs: int) -> dict[str, float]:
    """Wall time of the same training run with ERM, HTL sync and HTL async refresh."""
    walls = {}
    for mode in ("erm", "sync", "async"):
        method = "erm" if mode == "erm" else "htl"
        cfg = load_config(None, [
            f"data.path={data}", f"run.storage_path={root / 'runs'}",
            f"run.name={mode}-{int(time.time())}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"train.epochs={epochs}", "data.batch_size=16", "scaling.num_workers=2",
            "scaling.resources_per_worker={CPU: 0.5}", f"htl.method={method}",
            "htl.refresh_every=1", "htl.warmup_epochs=0",
            f"htl.asynchronous={'true' if mode == 'async' else 'false'}",
            "model.decoder_channels=[64,32,16,8,4]", "htl.scorer_batch_size=64"])
        t0 = time.perf_counter()
        run_training(cfg)
        walls[mode] = time.perf_counter() - t0
    return walls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="CPUs of the pool and the baseline")
    p.add_argument("--actors", type=int, default=1, help="scorer actors sharing --threads")
    p.add_argument("--train-n", type=int, default=400, help="synthetic images, training part")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--skip-training", action="store_true",
                   help="only the scoring-throughput ratio")
    args = p.parse_args()
    root = workdir("scorer")
    data = root / "synthetic"
    if data.exists():
        shutil.rmtree(data)
    synthesize(data, n=args.n, size=args.size, seed=0)
    init_ray()
    ratio, plain, pool = scoring_ratio(data, args.threads, args.repeats, args.actors)
    print(f"plain in-process scoring: {plain:.1f} images/s; actor pool: {pool:.1f} images/s "
          f"({args.threads} CPUs each side, {args.actors} actor(s); K+1 = 4 forward passes "
          f"per image)")
    n_train = read_manifest(data)["split_counts"]["train"]
    overhead = n_train / pool - n_train / plain
    print(f"fixed cost of one actor-pool pass (actor start, model build, scheduling): "
          f"{overhead:.1f}s over {n_train} images")
    in_proc, via_pool, plain_s, scoring_s = plain_passes_ratio(data, args.threads, args.repeats)
    print(f"K+1 = 4 plain inference passes over {n_train} images: {plain_s:.1f}s; in-process "
          f"scoring (prune 3 copies + 4 passes + IoUs): {scoring_s:.1f}s")
    if not args.skip_training:
        small = root / "synthetic-train"
        if small.exists():
            shutil.rmtree(small)
        synthesize(small, n=args.train_n, size=args.train_size, seed=0)
        walls = refresh_ratio(small, root, args.epochs)
        print(f"training, {args.epochs} epochs, refresh every epoch: ERM {walls['erm']:.1f}s, "
              f"HTL sync {walls['sync']:.1f}s, HTL async {walls['async']:.1f}s")
    print(f"actor-pool / in-process scoring throughput = {ratio:.2f}  (target >= 0.8; "
          f"{n_train} images of {args.size}x{args.size})")
    print(f"in-process refresh / K+1 plain passes = {in_proc:.2f}  (target <= 1.1)")
    print(f"actor-pool refresh / K+1 plain passes = {via_pool:.2f}  (includes the pool's "
          "fixed start-up cost)")
    if not args.skip_training:
        print(f"HTL sync refresh / ERM training wall time = {walls['sync'] / walls['erm']:.2f}")
        print(f"HTL async refresh / ERM training wall time = {walls['async'] / walls['erm']:.2f}")
        print(f"async / sync refresh training wall time = {walls['async'] / walls['sync']:.2f}  "
              "(< 1: training does not wait)")


if __name__ == "__main__":
    main()
