"""A sweep directory's own state, `sweep_state.json`, and the directory's layout.

The file says which MLflow parent run the sweep directory belongs to (what `--resume` re-joins)
and how its search was made. It is written when a sweep starts (`tune.sweep.run_sweep`) or is
imported from the protocol archive (`htl_ray.archive`), and updated when a continued search is
created; the archive's background thread reads it meanwhile, so every write replaces the file
whole (a temporary file, then `os.replace`). This module is the only one that parses it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from htl_ray.config import ConfigError

STATE_FILE = "sweep_state.json"

# A sweep directory (`sweep.storage_path/sweep.name`): relative path → what it holds. The
# documentation's reference is generated from it.
LAYOUT: dict[str, str] = {
    STATE_FILE: "the sweep's MLflow parent run and tracking URI (what `--resume` re-joins), "
                "and how its search was made (`htl_ray.tune.state.SweepState`)",
    "tune/": "Ray Tune's experiment state, the searcher's and the scheduler's included "
             "(`--resume` restores it)",
    "runs/trial-<trial id>/": "each trial's run directory: Ray Train checkpoints, HTL tables",
    "runs/confirm-<group>-s<seed>/": "the confirmation runs (`--confirm`): the chosen "
                                     "configuration and its comparators, per seed",
    "runs/ablation-<variant>-s<seed>/": "the ablation runs (`--ablate`), scored on val only",
    "summary/": "best_config.yaml, study_summary.md, trials.csv and plots/*.png of the search",
    "report/": "the HTL report of the chosen configuration's seed-0 run (`htl-ray reproduce`): "
               "report.html and enrichment.csv (which the protocol archive carries)",
}

# the JSON keys, as older versions wrote them (the file's format is theirs)
_KEYS = {"parent_run_id": "parent_run_id", "tracking_uri": "tracking_uri",
         "sweep_file": "sweep_file", "stops_closed": "stops_closed_as_they_happen",
         "told_archived_trials": "told_archived_trials", "from_archive": "from_archive"}


@dataclass(frozen=True)
class SweepState:
    parent_run_id: str                  # the sweep's MLflow parent run
    tracking_uri: str | None = None     # its store (older or imported states: the config's)
    sweep_file: str | None = None       # the sweep file it was started from, absolute
    # its Tune state holds tune.trial_runs.CloseStoppedTrialRuns: a stopped trial's run is
    # closed as it stops (sweeps started before that callback existed: False)
    stops_closed: bool = False
    # a search created to continue a sweep: the archived trials it was told (trial ids)
    told_archived_trials: tuple[str, ...] = ()
    # a sweep imported from the protocol archive: the archive's folder
    from_archive: str | None = None
    # keys of a newer version, kept as they are when this version updates the file
    other: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "told_archived_trials", tuple(self.told_archived_trials))

    def to_json(self) -> dict[str, Any]:
        """The file's object: unset fields are left out, as older versions left them."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "other" or value in (None, False, ()):
                continue
            out[_KEYS[f.name]] = list(value) if isinstance(value, tuple) else value
        return {**self.other, **out}


def path_in(directory: Path) -> Path:
    return Path(directory) / STATE_FILE


def read(path: Path) -> SweepState:
    """The state in `path`, or one error naming the file when it is cut short or not one."""
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not readable as JSON ({exc}); restore it from a copy "
                          "of the sweep directory") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a sweep state (expected a JSON object)")
    return _from_json(path, raw)


def read_in(directory: Path) -> SweepState | None:
    """The state of the sweep directory `directory`, or None when it holds no sweep yet."""
    path = path_in(directory)
    return read(path) if path.is_file() else None


def _from_json(path: Path, raw: dict[str, Any]) -> SweepState:
    def text(key: str, required: bool = False) -> str | None:
        value = raw.get(key)
        if (value is None or value == "") and not required:     # "" as older versions wrote
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: not a sweep state ({key!r} should be a string, "
                              f"found {value!r}); restore it from a copy of the sweep directory")
        return value

    told = raw.get(_KEYS["told_archived_trials"], [])
    if not isinstance(told, list) or not all(isinstance(t, str) for t in told):
        raise ConfigError(f"{path}: not a sweep state ({_KEYS['told_archived_trials']!r} "
                          f"should be a list of trial ids, found {told!r})")
    return SweepState(
        parent_run_id=text(_KEYS["parent_run_id"], required=True),
        tracking_uri=text(_KEYS["tracking_uri"]), sweep_file=text(_KEYS["sweep_file"]),
        stops_closed=bool(raw.get(_KEYS["stops_closed"])),
        told_archived_trials=tuple(told), from_archive=text(_KEYS["from_archive"]),
        other={k: v for k, v in raw.items() if k not in _KEYS.values()})


def write(path: Path, state: SweepState) -> None:
    """Replace the file whole: a reader sees the old state or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state.to_json(), indent=2))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update(path: Path, **changes: Any) -> SweepState:
    """Change some fields of the state in `path` (atomically, as `write`); returns the new
    state."""
    state = replace(read(path), **changes)
    write(path, state)
    return state
