"""`htl-ray score`: HTL scores of a saved model on any split, and the quality-control risks as
failure detectors.

h and the other quality-control signals (htl_ray.quality: tta, entropy, uncertain) need no
labels, so on new data they flag the images where the model is likely to fail. On labeled
held-out data we measure how well each does that: its AUROC for "failed segmentation" (the
dense model's IoU < 0.65, the ISIC 2018 threshold).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from htl_ray.checkpoints import load_checkpoint, model_config_of
from htl_ray.config import DEFAULT_SPARSITIES
from htl_ray.data.loading import split_dataset
from htl_ray.errors import UserError
from htl_ray.htl.scorer import ScoringSpec, score_dataset
from htl_ray.metrics import ISIC_JACCARD_THRESHOLD, auroc
from htl_ray.run_dir import CHECKPOINT_FILE, read_meta


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name == CHECKPOINT_FILE:
        p = p.parent
    if not (p / CHECKPOINT_FILE).is_file():
        raise UserError(f"{path}: not a checkpoint (expected a directory with "
                        f"{CHECKPOINT_FILE}, as written by `htl-ray train`)")
    return p


def failure_summary(table: pd.DataFrame, score: str = "h") -> dict[str, Any]:
    """How well `score` — and every other quality-control risk the table holds — predicts
    failure (dense IoU < 0.65) on labeled data: `failure_auroc` (of `score`) and
    `risk_auroc` {risk: AUROC}."""
    from htl_ray.quality import RISKS

    out: dict[str, Any] = {"n": len(table), f"mean_{score}": float(table[score].mean())}
    if "dense_iou" in table:
        failed = table["dense_iou"].to_numpy() < ISIC_JACCARD_THRESHOLD
        out.update({"failure_rate": float(failed.mean()),
                    "failure_auroc": auroc(table[score].to_numpy(), failed)})
        out["risk_auroc"] = {name: auroc(risk.of(table), failed) for name, risk in RISKS.items()
                             if all(s in table for s in risk.signals)}
    return out


def score_checkpoint(checkpoint: str | Path, dataset: str | Path, *, split: str = "val",
                     sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
                     pruning: str = "l1_unstructured", actors: int = 1,
                     batch_size: int = 32, out: str | Path | None = None,
                     labels: bool = True, start_ray: Callable[[], None] | None = None,
                     ) -> tuple[pd.DataFrame, dict[str, Any], Path]:
    """Score `split` of `dataset` with the checkpoint's model and its pruned copies. Every
    input is checked (checkpoint loads, split has rows, output writable) before `start_ray`
    is called, so a mistake costs a second, not a cluster start."""
    from htl_ray.data.schema import check_records
    from htl_ray.paths import check_writable_dir

    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    state = load_checkpoint(ckpt)["model"]
    rows = check_records(dataset, "DATA").get("split_counts", {}).get(split, 0)
    if not rows:
        raise UserError(f"{dataset}: the {split} split has no rows; choose another --split")
    dest = Path(out) if out else ckpt.parent / f"htl_scores_{ckpt.name}_{split}.parquet"
    check_writable_dir(dest.parent, "--out")
    if start_ray is not None:
        start_ray()
    spec = ScoringSpec(model=model_config_of(ckpt, meta), sparsities=tuple(sparsities),
                       method=pruning, with_labels=labels, batch_size=batch_size, pool_size=actors,
                       quality=True)
    table = score_dataset(split_dataset(dataset, split), state, spec)
    summary = failure_summary(table)
    summary.update({"split": split, "checkpoint": str(ckpt), "epoch": meta.get("epoch"),
                    "measured_sparsity": table.attrs.get("measured_sparsity", {})})
    dest.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(dest, index=False)
    return table, summary, dest
