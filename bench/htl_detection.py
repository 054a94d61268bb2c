"""Does HTL scoring find the planted hard samples? And does h detect failures on real data?

1. Synthetic set with planted hard subgroups; a short ERM training (2 Ray Train workers);
   then the training split is scored with the best checkpoint, and we print the AUROC with
   which each ranking — HTL score h, per-sample loss, EL2N, random — finds the planted hard
   samples.
2. When ../shared/data/isic2018-task1-256 exists: a short training on ISIC at 64×64, then the
   AUROC of h (no labels needed) as a detector of failed segmentations (IoU < 0.65) on the
   validation split.

Usage: .venv/bin/python bench/htl_detection.py [--n 600] [--size 48] [--epochs 5]
       [--isic-checkpoint RUN/checkpoint_... --isic-data data/isic128]
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
from _common import init_ray, isic_dir, workdir

from htl_ray.config import load_config
from htl_ray.data.ingest import ingest
from htl_ray.data.layouts import IsicLayout
from htl_ray.data.schema import read_table
from htl_ray.data.synth import synthesize
from htl_ray.htl.offline import score_checkpoint
from htl_ray.metrics import auroc
from htl_ray.train.trainer import run_training


def train(data, root, name, epochs, extra=()):
    cfg = load_config(None, [f"data.path={data}", f"run.storage_path={root / 'runs'}",
                             f"run.name={name}-{int(time.time())}",
                             f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
                             f"train.epochs={epochs}", "train.lr=0.003", "data.batch_size=8",
                             "model.decoder_channels=[64,32,16,8,4]", *extra])
    return run_training(cfg)


def synthetic(args) -> dict[str, float]:
    root = workdir("detection")
    data = root / "synthetic"
    if data.exists():
        shutil.rmtree(data)
    synthesize(data, n=args.n, size=args.size, seed=args.seed)
    outcome = train(data, root, "synth", args.epochs)
    table, _, _ = score_checkpoint(outcome.best_checkpoint, data, split="train",
                                   out=root / "train_scores.parquet")
    meta = read_table(data, columns=["id", "planted_hard"], split="train")
    df = table.merge(meta, on="id")
    hard = df.planted_hard.to_numpy(bool)
    rng = np.random.default_rng(args.seed)
    result = {"htl_h": auroc(df.h, hard), "htl_h_gt": auroc(df.h_gt, hard),
              "loss": auroc(df.loss, hard), "el2n": auroc(df.el2n, hard),
              "random": auroc(rng.random(len(df)), hard)}
    print(f"\nsynthetic: {len(df)} training images, {hard.sum()} planted hard "
          f"({hard.mean():.0%}); model val dice {outcome.best_metrics.get('val/dice', 0):.3f}")
    return result


def isic_failure(args) -> float | None:
    if args.isic_checkpoint:
        _, summary, _ = score_checkpoint(args.isic_checkpoint, args.isic_data, split="val")
        print(f"\nISIC val with {args.isic_checkpoint}: {summary['failure_rate']:.1%} of images "
              "fail (IoU < 0.65)")
        return summary["failure_auroc"]
    src = isic_dir()
    if src is None:
        print("ISIC data not present: skipping the failure-detector part")
        return None
    root = workdir("detection-isic")
    data = root / "isic64"
    if not (data / "manifest.json").is_file():
        ingest(IsicLayout(), src, data, size=64)
    outcome = train(data, root, "isic", args.isic_epochs)
    _, summary, _ = score_checkpoint(outcome.best_checkpoint, data, split="val")
    print(f"\nISIC val (64x64, {args.isic_epochs} epochs, val dice "
          f"{outcome.best_metrics.get('val/dice', 0):.3f}): {summary['failure_rate']:.1%} of "
          "images fail (IoU < 0.65)")
    return summary["failure_auroc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--isic-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isic-checkpoint", help="score this trained ISIC checkpoint instead of "
                   "training a short 64x64 model")
    p.add_argument("--isic-data", help="the ingested ISIC dataset of --isic-checkpoint")
    args = p.parse_args()
    init_ray()
    result = synthetic(args)
    print("\nAUROC for finding the planted hard samples (1.0 = perfect, 0.5 = chance):")
    for k, v in result.items():
        print(f"  {k:<10} {v:.3f}")
    failure = isic_failure(args)
    if failure is not None:
        print(f"AUROC of h as a label-free failure detector on ISIC val: {failure:.3f}")
    print(f"HTL (h) AUROC / random AUROC = {result['htl_h'] / result['random']:.2f}")


if __name__ == "__main__":
    main()
