"""A training run's directory: what lives where in it, and the one reader and writer of its
state file.

`htl-ray train` writes everything a run produces under `run.storage_path/run.name`; `--resume`,
`report`, `evaluate`, `predict`, `register`, `compare` and the sweeps read it back. This module
knows the layout (`LAYOUT`, which the reference documentation prints), parses `htl_run.json`
into a `RunState`, and finds checkpoints by their `meta.json` — without importing torch, so that
the layers below training (models, report) can read a run without importing `train`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from htl_ray.config import ConfigError
from htl_ray.errors import UserError

STATE_FILE = "htl_run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_GLOB = "checkpoint_*"
CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
PER_SAMPLE_FILE = "val_per_sample.parquet"
HTL_DIR = "htl"
SNAPSHOT_DIR = "snapshots"
OUTBOX_DIR = "mlflow_outbox"
MODEL_DIR = "mlflow_model"
DIVERGED_FILE = "diverged.json"

LAYOUT: dict[str, str] = {
    STATE_FILE: "the run's state: MLflow run id and tracking URI, the config with absolute "
                "paths, the dataset fingerprint, the pinned initial weights and input size; "
                "what `--resume` continues",
    CONFIG_FILE: "the validated config, as YAML (also an MLflow artifact)",
    f"{CHECKPOINT_GLOB}/": "one per kept epoch (the best `train.keep_checkpoints`)",
    f"{CHECKPOINT_GLOB}/{CHECKPOINT_FILE}": "weights, optimiser and schedule state (load with "
                                            "torch.load(weights_only=True))",
    f"{CHECKPOINT_GLOB}/{META_FILE}": "the epoch, its metrics, the HTL version it trained "
                                      "with, the model config and input size",
    f"{CHECKPOINT_GLOB}/{PER_SAMPLE_FILE}": "every validation image's metrics at that epoch",
    f"{CHECKPOINT_GLOB}/test_per_sample.parquet": "the best checkpoint's per-image test "
                                                  "metrics (train.evaluate_test)",
    f"{HTL_DIR}/vNNNN.parquet": "HTL version N: every training sample's scores, selection and "
                                "weight, as the coordinator published it",
    f"{HTL_DIR}/{SNAPSHOT_DIR}/vNNNN.pt": "the model snapshot version N was scored from (the "
                                          "PIE population a restarted coordinator reloads)",
    f"{OUTBOX_DIR}/": "MLflow writes not yet taken by the tracking server; `htl-ray sync "
                      "RUN_DIR` sends them",
    f"{MODEL_DIR}/": "the best checkpoint as an MLflow Model (logged as the run's `model`)",
    DIVERGED_FILE: "why training stopped when the loss or weights stopped being numbers",
}


@dataclass
class RunState:
    """`htl_run.json`: what a run directory records of its run."""

    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    run_dir: str | None = None          # where the run was started (a copy lives elsewhere)
    config: dict[str, Any] = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    init_checkpoint_file: str | None = None
    input_size: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # keys this version does not know

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunState:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k != "extra" and k in raw}
        return cls(**known, extra={k: v for k, v in raw.items()
                                   if k not in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        return {**raw.pop("extra"), **raw}

    @property
    def checkpoint_metric(self) -> str:
        return self.config.get("train", {}).get("checkpoint_metric", "val/dice")


@dataclass(frozen=True)
class RunDir:
    """A run directory, whether or not it holds a run yet."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    # --- the state file ---------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def has_state(self) -> bool:
        return self.state_file.is_file()

    def state(self) -> RunState | None:
        """The run's state; None when the directory holds no run (no file, or an empty
        record). A file cut short or edited into something else is one UserError naming it."""
        if not self.has_state():
            return None
        try:
            raw = json.loads(self.state_file.read_text())
        except ValueError as exc:          # cut short, or edited by hand
            raise UserError(f"{self.state_file}: not readable as JSON ({exc}); restore it from "
                            "a copy of the run directory") from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.state_file}: not a run state (expected a JSON object)")
        return RunState.from_json(raw) if raw else None

    def require_state(self, asked_by: str = "") -> RunState:
        """The run's state, or one UserError saying this is not a run directory; `asked_by`
        (e.g. "--resume") starts the message."""
        state = self.state()
        if state is None and self.has_state():
            raise ConfigError(f"{asked_by + ' ' if asked_by else ''}{self.state_file}: records "
                              "no run (an empty JSON object); not a run directory")
        if state is None:
            raise ConfigError(f"{asked_by + ' ' if asked_by else ''}{self.path}: no {STATE_FILE} "
                            "there; not a run directory")
        return state

    def mlflow_run(self, asked_by: str = "") -> tuple[str, str]:
        """(tracking URI, MLflow run id) the run logs to, or one error saying the state does
        not record them."""
        state = self.require_state(asked_by)
        if not state.tracking_uri or not state.mlflow_run_id:
            raise ConfigError(f"{asked_by + ' ' if asked_by else ''}{self.state_file}: records "
                              "no MLflow run (tracking_uri and mlflow_run_id); was the run "
                              "started by `htl-ray train`?")
        return state.tracking_uri, state.mlflow_run_id

    def write_state(self, state: RunState) -> None:
        """Replace the state file atomically: a reader never sees half of it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self.path)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state.to_json(), out, indent=2)
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[dict[str, Any], Path]]:
        """(meta, directory) of every checkpoint with both files, newest epoch first. A
        directory whose meta.json is unreadable (a copy cut short) is left out."""
        found = []
        for meta_path in self.path.glob(f"{CHECKPOINT_GLOB}/{META_FILE}"):
            try:
                meta = json.loads(meta_path.read_text())
                int(meta["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if (meta_path.parent / CHECKPOINT_FILE).is_file():
                found.append((meta, meta_path.parent))
        return sorted(found, key=lambda mp: (int(mp[0]["epoch"]), mp[1].name), reverse=True)

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint directory with the highest epoch."""
        found = self.checkpoints()
        return found[0][1] if found else None

    def best_checkpoint(self, metric: str | None = None, *, require: str | None = None
                        ) -> tuple[Path, dict[str, float]] | None:
        """(directory, metrics) of the checkpoint with the highest `metric` — by default the
        run's own `train.checkpoint_metric` (val/dice when it has no state) — ties to the later
        epoch, among those holding the file `require` when given. Read from disk rather than
        from Ray Train's result, which misses a checkpoint that was written but not yet
        registered when a worker died: what "a run's best checkpoint" means everywhere."""
        if metric is None:
            state = self.state()
            metric = state.checkpoint_metric if state else "val/dice"
        found = [(meta.get("metrics", {}), d) for meta, d in self.checkpoints()
                 if require is None or (d / require).is_file()]
        found = [(m, d) for m, d in found if isinstance(m.get(metric), int | float)]
        if not found:
            return None
        metrics, directory = max(found, key=lambda md: (md[0][metric], md[0].get("epoch", -1)))
        return directory, metrics

    # --- HTL versions, the outbox, the model --------------------------------------------
    @property
    def htl_dir(self) -> Path:
        return self.path / HTL_DIR

    def htl_version_file(self, version: int) -> Path:
        return self.htl_dir / f"v{version:04d}.parquet"

    def htl_version_files(self) -> dict[int, Path]:
        """Every published HTL version's table, by version number."""
        return {int(p.stem[1:]): p for p in sorted(self.htl_dir.glob("v*.parquet"))}

    def snapshot_file(self, version: int) -> Path:
        return self.htl_dir / SNAPSHOT_DIR / f"v{version:04d}.pt"

    def snapshot_files(self) -> list[Path]:
        """The kept snapshots, oldest first."""
        return sorted((self.htl_dir / SNAPSHOT_DIR).glob("v*.pt"))

    @property
    def outbox_dir(self) -> Path:
        return self.path / OUTBOX_DIR

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def diverged_file(self) -> Path:
        return self.path / DIVERGED_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE


def read_meta(directory: str | Path) -> dict[str, Any]:
    """A checkpoint directory's meta.json; {} when it has none."""
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
