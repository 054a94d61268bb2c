"""Checkpoint files: model, optimiser, scheduler, epoch — loadable with weights_only=True.

A checkpoint directory holds `checkpoint.pt` (tensors and plain values only, so it never needs
unpickling of arbitrary objects), `meta.json` (epoch, metrics) and, for evaluation,
`val_per_sample.parquet`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
PER_SAMPLE_FILE = "val_per_sample.parquet"


def save_checkpoint(directory: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
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
    return torch.load(path, map_location=map_location, weights_only=True)


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint directory with the highest epoch under a run directory."""
    best: tuple[int, Path] | None = None
    for meta in Path(run_dir).glob("checkpoint_*/" + META_FILE):
        epoch = int(json.loads(meta.read_text()).get("epoch", -1))
        if (meta.parent / CHECKPOINT_FILE).is_file() and (best is None or epoch > best[0]):
            best = (epoch, meta.parent)
    return best[1] if best else None
