"""Per-image evaluation of a model on a split, and the held-out test evaluation of a run.

Two resolutions are scored. *Training resolution*: the prediction against the stored mask, both
at the size the model trains at (what validation reports each epoch). *Original resolution*:
the probability map resized to the image's original width and height, thresholded at 0.5, and
scored against the original mask (what the ISIC challenge scores, and what `htl-ray predict`
writes). Column and metric names of the second carry `original`.

Validation chooses the best epoch (and a sweep's best configuration), so validation numbers are
optimistic. The test split is looked at once, after training, by the checkpoint validation
chose (`best/test/*` metrics). Sweep trials never evaluate it, so no tuning decision can see the
images a comparison reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from htl_ray.analysis.groups import add_group_columns, flat_group_metrics
from htl_ray.config import ExperimentConfig
from htl_ray.data.loading import decode_batch
from htl_ray.device import Placement, placement
from htl_ray.errors import UserError
from htl_ray.metrics import METRIC_NAMES, per_image_metrics, summarize

VAL_META_COLUMNS = ["age", "sex", "site", "diagnosis", "area_fraction", "contrast"]
ORIGINAL_COLUMNS = ["orig_height", "orig_width", "orig_mask"]
ORIGINAL = "original"
TEST_SPLIT = "test"
EXTERNAL = "external"


def per_sample_file(split: str) -> str:
    """Name of the per-image table of `split` beside a checkpoint (val: written each epoch;
    `external/<site>`: external_<site>_per_sample.parquet)."""
    return f"{split.replace('/', '_')}_per_sample.parquet"


def original_metrics(probs: np.ndarray, batch: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per image: the metrics at the original size (prediction resized up, see module doc)."""
    from htl_ray.data.schema import decode_mask_png
    from htl_ray.inference import mask_of, probability_at

    rows = []
    for j in range(len(probs)):
        h, w = int(batch["orig_height"][j]), int(batch["orig_width"][j])
        buf = batch["orig_mask"][j]
        if buf is not None:
            truth = decode_mask_png(buf)
        else:   # stored at its original size
            truth = np.frombuffer(batch["mask"][j], np.uint8).reshape(
                int(batch["height"][j]), int(batch["width"][j])) > 0
        pred = mask_of(probability_at(probs[j], h, w))
        m = per_image_metrics(pred[None], truth[None])
        rows.append({f"{k}_{ORIGINAL}": float(m[k][0]) for k in METRIC_NAMES})
    return rows


def evaluate(model: torch.nn.Module, val_iter, *, batch_size: int, rank: int,
             world: int, place: Placement | None = None,
             original: bool = False) -> pd.DataFrame:
    """Per-image metrics for the rows this rank owns (row index mod world) of a Ray Dataset or
    dataset shard; with world = 1, every row. With `original` (the rows carry
    ORIGINAL_COLUMNS), also the metrics at original resolution (`<metric>_original`)."""
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
                probs = torch.sigmoid(model(place.inputs(x)).float())
            pred = probs > 0.5
            m = per_image_metrics(pred[:, 0], y[:, 0] > 0.5)
            at_original = original_metrics(probs[:, 0].cpu().numpy(), sub) if original else None
            for j in range(len(mine)):
                row = {"id": str(sub["id"][j])}
                row.update({c: sub[c][j] for c in VAL_META_COLUMNS if c in sub})
                row.update({k: float(m[k][j]) for k in METRIC_NAMES})
                if at_original:
                    row.update(at_original[j])
                rows.append(row)
    return pd.DataFrame(rows)


def split_metrics(table: pd.DataFrame, split: str) -> dict[str, float]:
    """`<split>/<metric>` means over images plus the Dice of every group and the worst group
    per attribute (`<split>/worst_group/<attr>/dice`); with original-resolution columns, also
    `<split>/original/<metric>`."""
    per_image = {k: table[k].to_numpy() for k in METRIC_NAMES}
    out = {f"{split}/{k}": v for k, v in summarize(per_image).items()}
    if f"dice_{ORIGINAL}" in table:
        out.update({f"{split}/{ORIGINAL}/{k}": v for k, v in summarize(
            {k: table[f"{k}_{ORIGINAL}"].to_numpy() for k in METRIC_NAMES}).items()})
    out.update(flat_group_metrics(add_group_columns(table), "dice", split))
    return out


def evaluate_checkpoint(checkpoint_dir: str | Path, cfg: ExperimentConfig,
                        split: str = TEST_SPLIT, *, data: str | Path | None = None,
                        name: str | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics and per-image table of a checkpoint's model (for Mean Teacher: the teacher, which
    validation scored) on `split` of `cfg.data.path` — or of another dataset `data`, whose
    metrics are then named `external/<name>/...` — at training and original resolution; the
    table is written beside the checkpoint. Runs where it is called (the driver), with the
    threads torch finds there."""
    from htl_ray.checkpoints import load_checkpoint
    from htl_ray.data.loading import TRAIN_COLUMNS, split_dataset
    from htl_ray.data.schema import has_column
    from htl_ray.models import create_model

    directory = Path(checkpoint_dir)
    dataset = Path(data) if data is not None else Path(cfg.data.path)
    prefix = f"{EXTERNAL}/{name}" if data is not None else split
    model = create_model(cfg.model)
    model.load_state_dict(load_checkpoint(directory)["model"])
    original = has_column(dataset, "orig_mask")
    columns = TRAIN_COLUMNS + VAL_META_COLUMNS + (ORIGINAL_COLUMNS if original else [])
    ds = split_dataset(dataset, split, columns=columns)
    table = evaluate(model, ds, batch_size=cfg.data.val_batch_size, rank=0, world=1,
                     original=original)
    if table.empty:
        raise UserError(f"{'--data' if data is not None else 'data.path'}: {dataset} has no "
                         f"rows in the {split!r} split")
    table.to_parquet(directory / per_sample_file(prefix), index=False)
    return split_metrics(table, prefix), table
