"""Per-image evaluation of a model on a split, and the held-out test evaluation of a run.

Validation chooses the best epoch (and a sweep's best configuration), so validation numbers are
optimistic. The test split is looked at once, after training, by the checkpoint validation
chose (`best/test/*` metrics). Sweep trials never evaluate it, so no tuning decision can see the
images a comparison reports.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from htl_ray.analysis.groups import add_group_columns, flat_group_metrics
from htl_ray.config import ExperimentConfig
from htl_ray.data.loading import decode_batch
from htl_ray.device import Placement, placement
from htl_ray.metrics import METRIC_NAMES, per_image_metrics, summarize

VAL_META_COLUMNS = ["age", "sex", "site", "diagnosis", "area_fraction", "contrast"]
TEST_SPLIT = "test"


def per_sample_file(split: str) -> str:
    """Name of the per-image table of `split` beside a checkpoint (val: written each epoch)."""
    return f"{split}_per_sample.parquet"


def evaluate(model: torch.nn.Module, val_iter, batch_size: int, rank: int,
             world: int, place: Placement | None = None) -> pd.DataFrame:
    """Per-image metrics for the rows this rank owns (row index mod world) of a Ray Dataset or
    dataset shard; with world = 1, every row."""
    place = place or placement("cpu", "fp32", "contiguous")
    model.eval()
    rows = []
    offset = 0
    with torch.inference_mode():
        for batch in val_iter.iter_batches(batch_size=batch_size, batch_format="numpy"):
            n = len(batch["id"])
            mine = [i for i in range(n) if (offset + i) % world == rank]
            offset += n
            if not mine:
                continue
            sub = {k: v[mine] for k, v in batch.items()}
            x, y = decode_batch(sub)
            with place.autocast():
                pred = torch.sigmoid(model(place.inputs(x))) > 0.5
            m = per_image_metrics(pred[:, 0], y[:, 0] > 0.5)
            for j in range(len(mine)):
                row = {"id": str(sub["id"][j])}
                row.update({c: sub[c][j] for c in VAL_META_COLUMNS if c in sub})
                row.update({k: float(m[k][j]) for k in METRIC_NAMES})
                rows.append(row)
    return pd.DataFrame(rows)


def split_metrics(table: pd.DataFrame, split: str) -> dict[str, float]:
    """`<split>/<metric>` means over images plus the Dice of every group and the worst group
    per attribute (`<split>/worst_group/<attr>/dice`)."""
    per_image = {k: table[k].to_numpy() for k in METRIC_NAMES}
    out = {f"{split}/{k}": v for k, v in summarize(per_image).items()}
    out.update(flat_group_metrics(add_group_columns(table), "dice", split))
    return out


def evaluate_checkpoint(checkpoint_dir: str | Path, cfg: ExperimentConfig,
                        split: str = TEST_SPLIT) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics and per-image table of a checkpoint's model (for Mean Teacher: the teacher, which
    validation scored) on `split` of `cfg.data.path`; the table is written beside the
    checkpoint. Runs where it is called (the driver), with the threads torch finds there."""
    from htl_ray.data.loading import TRAIN_COLUMNS, split_dataset
    from htl_ray.models import create_model
    from htl_ray.train.checkpoints import load_checkpoint

    directory = Path(checkpoint_dir)
    model = create_model(cfg.model)
    model.load_state_dict(load_checkpoint(directory)["model"])
    ds = split_dataset(cfg.data.path, split, columns=TRAIN_COLUMNS + VAL_META_COLUMNS)
    table = evaluate(model, ds, cfg.data.val_batch_size, rank=0, world=1)
    if table.empty:
        raise ValueError(f"data.path: {cfg.data.path} has no rows in the {split!r} split")
    table.to_parquet(directory / per_sample_file(split), index=False)
    return split_metrics(table, split), table
