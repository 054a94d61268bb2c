"""Checkpoint files: model, optimiser, scheduler, epoch — loadable with weights_only=True.

A checkpoint directory holds `checkpoint.pt` (tensors and plain values only, so it never needs
unpickling of arbitrary objects), `meta.json` (epoch, metrics) and, for evaluation,
`val_per_sample.parquet`. Where they live in a run directory, and how the newest and the best
are found, is run_dir.py's; this module writes and loads them (torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from htl_ray.errors import UserError, first_line
from htl_ray.run_dir import (
    CHECKPOINT_FILE,
    META_FILE,
    RunDir,
    read_meta,
)


def save_checkpoint(directory: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, *, epoch: int,
                    metrics: dict[str, float], extra: dict[str, Any] | None = None,
                    extra_state: dict[str, Any] | None = None) -> Path:
    """`extra` goes to meta.json (plain values); `extra_state` into checkpoint.pt (tensors,
    e.g. a semi-supervised student next to its teacher)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "epoch": epoch,
        "rng_torch": torch.get_rng_state(),
        "htl_version": int((extra or {}).get("htl_version", 0)),
        **(extra_state or {}),
    }
    torch.save(state, d / CHECKPOINT_FILE)
    (d / META_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics,
                                           **(extra or {})}, indent=2, default=float))
    return d / CHECKPOINT_FILE


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no {CHECKPOINT_FILE})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, empty, not a zip, hostile pickle
        raise UserError(f"{path}: not a loadable checkpoint: it is empty, cut short or not "
                        f"written by torch.save ({first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not an htl-ray checkpoint (no 'model' weights in it)")
    return state


def resume_state(registered: str | Path | None,
                 run_dir: str | Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a (re)started worker group resumes from, loaded.

    Ray Train hands the workers the newest checkpoint its controller has *registered*. A worker
    that reported epoch N's checkpoint (written to storage) and died before the controller's
    next poll leaves a newer checkpoint on disk: resuming from the registered one would train
    epoch N again and log it twice. So the newest checkpoint on disk that loads wins; the
    registered one is the fallback (and the only one when the run directory is not visible)."""
    floor = int(read_meta(registered).get("epoch", -1)) if registered else -1
    if run_dir is not None and Path(run_dir).is_dir():
        for meta, directory in RunDir(run_dir).checkpoints():
            if int(meta["epoch"]) <= floor:
                break
            try:
                return directory, load_checkpoint(directory)
            except Exception:   # noqa: BLE001 - a half-copied file: try the next older one
                continue
    if registered is None:
        return None
    return Path(registered), load_checkpoint(registered)


def model_config_of(ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The architecture of a checkpoint: its meta.json, else its run's htl_run.json."""
    if "model_config" in meta:
        return meta["model_config"]
    state = RunDir(ckpt.parent).state()
    if state is not None:
        return state.config["model"]
    raise UserError(f"{ckpt}: no model_config in meta.json and no htl_run.json beside it; "
                     "cannot tell which architecture to build")
