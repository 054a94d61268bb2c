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

from htl_ray.errors import UserError, first_line

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
PER_SAMPLE_FILE = "val_per_sample.parquet"
RUN_STATE_FILE = "htl_run.json"     # in a run directory: its config and MLflow run id


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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, empty, not a zip, hostile pickle
        raise UserError(f"{path}: not a loadable checkpoint: it is empty, cut short or not "
                        f"written by torch.save ({first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not an htl-ray checkpoint (no 'model' weights in it)")
    return state


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoints_on_disk(run_dir: str | Path) -> list[tuple[dict[str, Any], Path]]:
    """(meta, directory) of every checkpoint under a run directory with both files, newest
    epoch first. A directory whose meta.json is unreadable (a copy cut short) is left out."""
    found = []
    for meta_path in Path(run_dir).glob("checkpoint_*/" + META_FILE):
        try:
            meta = json.loads(meta_path.read_text())
            int(meta["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (meta_path.parent / CHECKPOINT_FILE).is_file():
            found.append((meta, meta_path.parent))
    return sorted(found, key=lambda mp: (int(mp[0]["epoch"]), mp[1].name), reverse=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint directory with the highest epoch under a run directory."""
    found = checkpoints_on_disk(run_dir)
    return found[0][1] if found else None


def best_checkpoint(run_dir: str | Path, metric: str, require: str | None = None
                    ) -> tuple[Path, dict[str, float]] | None:
    """(directory, metrics) of the checkpoint with the highest `metric` under a run directory
    (ties: the later epoch), among those holding the file `require` when given. Read from disk
    rather than from Ray Train's result, which misses a checkpoint that was written but not
    yet registered when a worker died."""
    found = [(meta.get("metrics", {}), d) for meta, d in checkpoints_on_disk(run_dir)
             if require is None or (d / require).is_file()]
    found = [(m, d) for m, d in found if isinstance(m.get(metric), int | float)]
    if not found:
        return None
    metrics, directory = max(found, key=lambda md: (md[0][metric], md[0].get("epoch", -1)))
    return directory, metrics


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
        for meta, directory in checkpoints_on_disk(run_dir):
            if int(meta["epoch"]) <= floor:
                break
            try:
                return directory, load_checkpoint(directory)
            except Exception:   # noqa: BLE001 - a half-copied file: try the next older one
                continue
    if registered is None:
        return None
    return Path(registered), load_checkpoint(registered)


def read_run_state(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's htl_run.json (config, MLflow run id and URI, dataset fingerprint,
    training size); {} when there is none. The one reader of that file."""
    path = Path(run_dir) / RUN_STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:          # cut short, or edited by hand
        raise UserError(f"{path}: not readable as JSON ({exc}); restore it from a copy of the "
                        "run directory") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a run state (expected a JSON object)")
    return state


def best_of_run(run_dir: str | Path) -> tuple[Path, dict[str, float]] | None:
    """`best_checkpoint` by the run's own `train.checkpoint_metric` (from its run state file;
    val/dice when it has none): what "a run's best checkpoint" means everywhere."""
    metric = read_run_state(run_dir).get("config", {}).get("train", {}).get(
        "checkpoint_metric", "val/dice")
    return best_checkpoint(run_dir, metric)


def model_config_of(ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The architecture of a checkpoint: its meta.json, else its run's htl_run.json."""
    if "model_config" in meta:
        return meta["model_config"]
    if (ckpt.parent / RUN_STATE_FILE).is_file():
        return read_run_state(ckpt.parent)["config"]["model"]
    raise UserError(f"{ckpt}: no model_config in meta.json and no htl_run.json beside it; "
                     "cannot tell which architecture to build")
