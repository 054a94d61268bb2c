"""Data path throughput, measured as ratios within one run (this machine is noisy).

Samples/s of the training ingest path — the materialised Ray Dataset of raw uint8 buffers at
training resolution (as the trainer hands it to the workers) iterated in batches with the
training loop's local shuffle, turned into float tensors and augmented — ÷ a
`torch.utils.data.DataLoader` doing the same work over the same rows held in memory (shuffled,
same batch size, same decode and augmentation, same torch threads). Target ≥ 0.9.

Four sides, one pass of each per round: Ray Data decoding in its formatting thread
(`iter_decoded`, the trainer's path), Ray Data decoding in the consumer (the path before),
a DataLoader without worker processes, and a DataLoader whose one worker process decodes.
Each ratio is the median over rounds of the ratio of the two sides' passes in that round.

Before any of that, the trainer reads its split: the seconds of `split_dataset` reading the
training split with Ray Data's read tasks ÷ the driver reading it with pyarrow (what it does
for record files that fit in one Ray Data block), in alternating order over rounds.

Whether this path starves training is measured where training happens:
`bench/training_overhead.py` prints the fraction of a Ray Train epoch spent waiting for data.

Usage: .venv/bin/python bench/data_path.py [--n 1000] [--size 128] [--passes 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import init_ray, workdir

from htl_ray.config import AugmentConfig
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import TRAIN_COLUMNS, decode_batch, iter_decoded, split_dataset
from htl_ray.data.schema import read_table
from htl_ray.data.synth import synthesize


def _augmented(batches, augment: AugmentConfig, seed: int) -> tuple[int, float]:
    """(samples, seconds) to draw every decoded batch of a pass and augment it: the one timing
    loop every side shares, so the sides differ only in where they decode."""
    gen = torch.Generator().manual_seed(seed)
    n, t0 = 0, time.perf_counter()
    for x, y, *_ in batches:
        x, y = augment_batch(x, y, augment, gen)
        n += len(x)
    return n, time.perf_counter() - t0


def _shuffled(batch_size: int, seed: int) -> dict:
    return {"batch_size": batch_size, "local_shuffle_buffer_size": max(4 * batch_size, 64),
            "local_shuffle_seed": seed}


def ray_pass(ds, batch_size: int, seed: int, augment: AugmentConfig) -> tuple[int, float]:
    """Ray Data, decoding in the consumer (the trainer's path before `iter_decoded`)."""
    batches = (decode_batch(b) for b in ds.iter_batches(batch_format="numpy",
                                                         **_shuffled(batch_size, seed)))
    return _augmented(batches, augment, seed)


def ray_decoding_pass(ds, batch_size: int, seed: int,
                      augment: AugmentConfig) -> tuple[int, float]:
    """Ray Data decoding in its formatting thread (`iter_decoded`, as the trainer does): the
    decode of the next batch overlaps the augmentation of this one."""
    return _augmented(iter_decoded(ds, **_shuffled(batch_size, seed)), augment, seed)


def read_seconds(data: Path, driver_read_max_bytes: int | None) -> float:
    """Seconds until the training split is a materialised Ray Dataset."""
    t0 = time.perf_counter()
    split_dataset(data, "train", driver_read_max_bytes=driver_read_max_bytes)
    return time.perf_counter() - t0


class Rows(torch.utils.data.Dataset):
    def __init__(self, table):
        self.columns = {c: table[c].to_numpy() for c in TRAIN_COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, i: int) -> int:
        return i


def loader_pass(rows: Rows, batch_size: int, seed: int, augment: AugmentConfig,
                workers: int = 0) -> tuple[int, float]:
    """`workers` = 1: decoding in one DataLoader worker process, augmentation here."""

    def collate(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices)
        return decode_batch({k: v[idx] for k, v in rows.columns.items()})

    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed))
    return _augmented(loader, augment, seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="synthetic images (70%% train)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    root = workdir("data-path")
    shutil.rmtree(root, ignore_errors=True)
    data = root / "synthetic"
    synthesize(data, n=args.n, size=args.size, seed=0)
    torch.set_num_threads(args.threads)
    init_ray()
    readers = {"Ray Data read tasks": 0, "driver read": None}    # name: driver_read_max_bytes
    reads: dict[str, list[float]] = {name: [] for name in readers}
    for i in range(args.passes + 1):                     # the first round warms both up
        for name in list(readers)[:: 1 if i % 2 else -1]:          # either side first in turn
            seconds = read_seconds(data, readers[name])
            if i:
                reads[name].append(seconds)
    ds = split_dataset(data, "train")                    # as the trainer hands it over
    rows = Rows(read_table(data, columns=TRAIN_COLUMNS, split="train"))
    augment = AugmentConfig()
    sides = {                                   # name: one pass -> (samples, seconds)
        "Ray Data, decoding in its formatting thread (the trainer's path)":
            lambda seed: ray_decoding_pass(ds, args.batch_size, seed, augment),
        "Ray Data, decoding in the consumer":
            lambda seed: ray_pass(ds, args.batch_size, seed, augment),
        "DataLoader, no workers":
            lambda seed: loader_pass(rows, args.batch_size, seed, augment),
        "DataLoader, 1 worker process decoding":
            lambda seed: loader_pass(rows, args.batch_size, seed, augment, workers=1),
    }
    for run in sides.values():                                  # warm-up every side
        run(0)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(1, args.passes + 1):                          # one pass of each, in turn
        for name, run in sides.items():
            n, t = run(i)
            rates[name].append(n / t)
    print(f"{len(rows)} training images {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), decode + flips/rot90/colour jitter")
    for name, r in rates.items():
        print(f"{name}: samples/s " + ", ".join(f"{v:.0f}" for v in r))

    for name, r in reads.items():
        print(f"reading the training split, {name}: seconds " + ", ".join(f"{v:.2f}" for v in r))

    def paired(a: str, b: str) -> float:
        # passes of one round are adjacent: the median of the per-round ratios is robust to
        # the machine's slow and fast spells (the best passes are not)
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    trainer, consumer, loader0, loader1 = rates
    read_ratios = [a / b for a, b in zip(*reads.values(), strict=True)]
    print(f"split read: Ray Data read tasks / driver read = "
          f"{statistics.median(read_ratios):.1f}x the time (median of {args.passes} rounds, "
          f"range {min(read_ratios):.1f}-{max(read_ratios):.1f}x; the trainer reads in the "
          f"driver when the records fit in one Ray Data block)")
    print(f"decoding in Ray's thread / decoding in the consumer = {paired(trainer, consumer):.3f}")
    print(f"Ray Data (trainer's path) / DataLoader with 1 worker process = "
          f"{paired(trainer, loader1):.3f}")
    print(f"Ray Data (consumer decoding) / DataLoader, no workers = "
          f"{paired(consumer, loader0):.3f}")
    print(f"Ray Data / DataLoader throughput = {paired(trainer, loader0):.3f}  (the trainer's "
          f"path vs a DataLoader without workers; median of {args.passes} rounds; target >= 0.9)")


if __name__ == "__main__":
    main()
