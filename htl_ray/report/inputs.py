"""Everything a report reads from one run directory, gathered and checked in one place.

The HTL scores are the run's last refresh (`htl/vNNNN.parquet`) when it has one. A run
without refreshes (ERM, focal, a baseline) is scored here, label-free, with its best
checkpoint against its pruned copies at the run's sparsities — so every run gets an HTL set,
computed the same way, and the report says which source it used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from htl_ray.analysis.groups import add_group_columns
from htl_ray.checkpoints import load_checkpoint
from htl_ray.config import ExperimentConfig, from_dict
from htl_ray.data.schema import RECORDS_FILE, read_table
from htl_ray.errors import UserError
from htl_ray.run_dir import PER_SAMPLE_FILE, RunDir, RunState, read_meta

logger = logging.getLogger(__name__)


@dataclass
class RunInputs:
    run_dir: Path
    config: ExperimentConfig
    state: RunState                       # htl_run.json: MLflow run id, tracking URI
    best_checkpoint: Path
    best_epoch: int
    val: pd.DataFrame                     # per-image validation metrics + group columns
    htl: pd.DataFrame                     # training images: id, h, selected + group columns
    htl_source: str
    versions: dict[int, pd.DataFrame]     # every refresh's table (empty without refreshes)
    dataset: pd.DataFrame                 # metadata of every split (no pixels)

    @property
    def name(self) -> str:
        return self.config.run.name


def best_evaluated_checkpoint(run_dir: Path, metric: str) -> tuple[Path, int]:
    """The run's best checkpoint among those with per-image validation metrics (the report's
    tables need them), and its epoch."""
    best = RunDir(run_dir).best_checkpoint(metric, require=PER_SAMPLE_FILE)
    if best is None:
        raise UserError(f"{run_dir}: no checkpoint with {metric} and {PER_SAMPLE_FILE}; "
                                "is this a finished `htl-ray train` run directory?")
    directory, metrics = best
    epoch = metrics.get("epoch")                  # the loop logs it; meta.json always has it
    return directory, int(read_meta(directory)["epoch"] if epoch is None else epoch)


def _score_offline(cfg: ExperimentConfig, state_dict: dict[str, Any]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    from htl_ray.htl.scorer import ScoringSpec, score_in_process
    from htl_ray.htl.scoring import select_htl

    rows = pq.read_table(Path(cfg.data.path) / RECORDS_FILE,
                         columns=["id", "image", "mask", "height", "width"],
                         filters=[("split", "==", "train")]).to_pydict()
    batch = {k: np.asarray(v, dtype=object) for k, v in rows.items()}
    logger.info(f"[htl-ray] report: scoring {len(batch['id'])} training images with the best "
                f"checkpoint and its pruned copies (sparsities {cfg.htl.sparsities})")
    spec = ScoringSpec(model=cfg.to_dict()["model"], sparsities=tuple(cfg.htl.sparsities),
                       method=cfg.htl.pruning, with_labels=False, batch_size=64)
    table = score_in_process(batch, state_dict, spec)
    table["selected"] = select_htl(table["h"].to_numpy(), q=cfg.htl.q, tau=cfg.htl.tau,
                                   seed=cfg.run.seed)
    return table


def load_run(run_dir: str | Path) -> RunInputs:
    from htl_ray.htl.coordinator import load_versions

    run_dir = Path(run_dir).resolve()
    state = RunDir(run_dir).require_state("report:")
    cfg = from_dict(state.config)
    if not (Path(cfg.data.path) / RECORDS_FILE).is_file():
        raise UserError(f"{run_dir}: the run's dataset {cfg.data.path} is not here "
                                "(the report reads images and metadata from it)")
    ckpt, epoch = best_evaluated_checkpoint(run_dir, cfg.train.checkpoint_metric)
    val = add_group_columns(pd.read_parquet(ckpt / PER_SAMPLE_FILE))
    dataset = read_table(cfg.data.path)
    versions = load_versions(run_dir)
    if versions:
        last = max(versions)
        htl = versions[last][["id", "h", "selected"]].copy()
        source = f"the run's last HTL refresh (version {last} of {len(versions)})"
    else:
        htl = _score_offline(cfg, load_checkpoint(ckpt)["model"])[["id", "h", "selected"]]
        source = (f"scored for this report with the best checkpoint (epoch {epoch + 1}), "
                  f"label-free, top q = {cfg.htl.q}")
    train_meta = dataset[dataset["split"] == "train"]
    htl = add_group_columns(htl.merge(train_meta, on="id", how="left"))
    return RunInputs(run_dir=run_dir, config=cfg, state=state, best_checkpoint=ckpt,
                     best_epoch=epoch, val=val, htl=htl, htl_source=source, versions=versions,
                     dataset=dataset)
