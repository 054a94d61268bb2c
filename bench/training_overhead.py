"""Training overhead of Ray Train, measured as a ratio within one run (this machine is noisy).

One training epoch under Ray Train (`TorchTrainer`, 1 worker, Ray Data shard) ÷ the same epoch
in a plain PyTorch loop over the same rows in memory: same model, decoding, augmentation,
loss, optimiser, batch size and torch threads. Target ≤ 1.10. Also printed: the fraction of the
Ray epoch its worker spent waiting for the next batch (`time/data_wait_s`, the data path must
never starve training; the batch arrives decoded, from Ray Data's formatting thread) and
preparing it (augment + placement, `time/data_prep_s`). The plain loop decodes in the loop.

Epoch times are the training part of each epoch (`time/train_epoch_s`: no validation), the
median over epochs 2..E (epoch 1 warms up allocators and Ray Data).

Usage: .venv/bin/python bench/training_overhead.py [--n 600] [--size 64] [--epochs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np
import torch
from _common import init_ray, workdir

from htl_ray.config import load_config
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import decode_batch
from htl_ray.data.schema import read_table
from htl_ray.data.synth import synthesize
from htl_ray.losses import weighted_mean
from htl_ray.models import create_model
from htl_ray.supervision import SETTINGS
from htl_ray.train.optimization import make_optimizer
from htl_ray.train.trainer import run_training


def plain_epochs(cfg, epochs: int, threads: int) -> list[float]:
    """The loop of `htl_ray.train.loop` without Ray: rows from memory, shuffled per epoch."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)
    rows = read_table(cfg.data.path, columns=["id", "image", "mask", "height", "width"],
                      split="train")
    batch_all = {c: rows[c].to_numpy() for c in rows.columns}
    model = create_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.parameters())
    objective = SETTINGS[cfg.supervision.setting](cfg)
    objective.attach(model)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101)
        order = np.random.default_rng(epoch).permutation(len(rows))
        bs = cfg.data.batch_size
        for start in range(0, len(order), bs):
            sel = order[start:start + bs]
            batch = {k: v[sel] for k, v in batch_all.items()}
            x, y = decode_batch(batch)
            x, y = augment_batch(x, y, cfg.data.augment, gen)
            per_sample = objective.per_sample_loss(model, x, y, batch, np.arange(len(sel)),
                                                   epoch, gen)
            loss = weighted_mean(per_sample, None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step(model)
        times.append(time.perf_counter() - t0)
    return times


def ray_epochs(cfg) -> dict[str, list[float]]:
    from htl_ray.tracking import client as tracking_client

    outcome = run_training(cfg)
    client = tracking_client(outcome.tracking_uri)

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(outcome.mlflow_run_id, key),
                                        key=lambda m: m.step)]

    return {k: history(f"time/{k}") for k in ("train_epoch_s", "data_wait_s", "data_prep_s")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600, help="synthetic images (70%% train)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    root = workdir("training-overhead")
    data = root / "synthetic"
    shutil.rmtree(root, ignore_errors=True)
    synthesize(data, n=args.n, size=args.size, seed=0)
    cfg = load_config(None, [
        f"data.path={data}", f"run.storage_path={root / 'runs'}", "run.name=overhead",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"train.epochs={args.epochs}",
        f"data.batch_size={args.batch_size}", "scaling.num_workers=1",
        f"scaling.resources_per_worker={{CPU: {args.threads}}}",
        f"scaling.torch_threads={args.threads}"])
    init_ray()
    plain_before = plain_epochs(cfg, args.epochs, args.threads)
    ray_t = ray_epochs(cfg)
    plain_after = plain_epochs(cfg, args.epochs, args.threads)   # before and after: drift
    plain = statistics.median(plain_before[1:] + plain_after[1:])
    ray_epoch = statistics.median(ray_t["train_epoch_s"][1:])
    wait = statistics.median(w / t for w, t in zip(ray_t["data_wait_s"][1:],
                                                   ray_t["train_epoch_s"][1:], strict=True))
    prep = statistics.median(w / t for w, t in zip(ray_t["data_prep_s"][1:],
                                                   ray_t["train_epoch_s"][1:], strict=True))
    n_train = len(read_table(data, columns=["id"], split="train"))
    print(f"{n_train} training images {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s) each side, U-Net/ResNet-18")
    print("plain epochs (s): " + ", ".join(f"{t:.2f}" for t in plain_before + plain_after))
    print("ray epochs   (s): " + ", ".join(f"{t:.2f}" for t in ray_t["train_epoch_s"]))
    print(f"data wait / Ray epoch = {wait:.3f}  (time blocked on the Ray Data iterator, which "
          "decodes in its own thread)")
    print(f"data prep / Ray epoch = {prep:.3f}  (augment + placement in the worker's loop)")
    print(f"Ray Train epoch / plain PyTorch epoch = {ray_epoch / plain:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
