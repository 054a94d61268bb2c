"""Data path throughput, measured as a ratio within one run (this machine is noisy).

Samples/s of the training ingest path — the materialised Ray Dataset of raw uint8 buffers at
training resolution (as the trainer hands it to the workers) iterated in batches with the
training loop's local shuffle, turned into float tensors and augmented — ÷ a
`torch.utils.data.DataLoader` doing the same work over the same rows held in memory (shuffled,
same batch size, same decode and augmentation, same torch threads, no worker processes on
either side). Target ≥ 0.9. Passes alternate between the two; the ratio is the median of the
ratios of adjacent passes.

Whether this path starves training is measured where training happens:
`bench/training_overhead.py` prints the fraction of a Ray Train epoch spent waiting for data.

Usage: .venv/bin/python bench/data_path.py [--n 1000] [--size 128] [--passes 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np
import torch
from _common import init_ray, quiet, workdir

from htl_ray.config import AugmentConfig
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import TRAIN_COLUMNS, decode_batch, split_dataset
from htl_ray.data.schema import read_table
from htl_ray.data.synth import synthesize


def ray_pass(ds, batch_size: int, seed: int,
             augment: AugmentConfig) -> tuple[int, float, float]:
    """(samples, seconds, seconds spent inside the Ray Data iterator)."""
    gen = torch.Generator().manual_seed(seed)
    n, waited, t0 = 0, 0.0, time.perf_counter()
    t_next = t0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy",
                                 local_shuffle_buffer_size=max(4 * batch_size, 64),
                                 local_shuffle_seed=seed):
        waited += time.perf_counter() - t_next
        x, y = augment_batch(*decode_batch(batch), augment, gen)
        n += len(x)
        t_next = time.perf_counter()
    return n, time.perf_counter() - t0, waited


class Rows(torch.utils.data.Dataset):
    def __init__(self, table):
        self.columns = {c: table[c].to_numpy() for c in TRAIN_COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, i: int) -> int:
        return i


def loader_pass(rows: Rows, batch_size: int, seed: int,
                augment: AugmentConfig) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(seed)

    def collate(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices)
        return decode_batch({k: v[idx] for k, v in rows.columns.items()})

    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True,
                                         num_workers=0, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed))
    n, t0 = 0, time.perf_counter()
    for x, y in loader:
        x, y = augment_batch(x, y, augment, gen)
        n += len(x)
    return n, time.perf_counter() - t0


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
    synthesize(data, n=args.n, size=args.size, seed=0, log=quiet)
    torch.set_num_threads(args.threads)
    init_ray()
    ds = split_dataset(data, "train")                    # as the trainer hands it over
    rows = Rows(read_table(data, columns=TRAIN_COLUMNS, split="train"))
    augment = AugmentConfig()
    ray_pass(ds, args.batch_size, 0, augment)                   # warm-up both sides
    loader_pass(rows, args.batch_size, 0, augment)
    ray_rates, loader_rates, in_iterator = [], [], []
    for i in range(1, args.passes + 1):
        n, t, waited = ray_pass(ds, args.batch_size, i, augment)
        ray_rates.append(n / t)
        in_iterator.append(waited / t)
        n, t = loader_pass(rows, args.batch_size, i, augment)
        loader_rates.append(n / t)
    print(f"{len(rows)} training images {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), decode + flips/rot90/colour jitter")
    print("Ray Data samples/s:  " + ", ".join(f"{r:.0f}" for r in ray_rates))
    print("DataLoader samples/s: " + ", ".join(f"{r:.0f}" for r in loader_rates))
    print("share of a Ray pass inside the iterator (the rest: decode + augment): "
          + ", ".join(f"{w:.2f}" for w in in_iterator))
    # each Ray pass is paired with the DataLoader pass right after it: the median of the
    # paired ratios is robust to the machine's slow and fast spells (the best passes are not)
    paired = statistics.median(r / d for r, d in zip(ray_rates, loader_rates, strict=True))
    print(f"best pass each side: Ray Data / DataLoader = {max(ray_rates) / max(loader_rates):.3f}")
    print(f"Ray Data / DataLoader throughput = {paired:.3f}  (median of {args.passes} paired "
          "passes; target >= 0.9)")


if __name__ == "__main__":
    main()
