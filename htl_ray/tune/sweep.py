"""`htl-ray tune`: a Ray Tune sweep of training runs, searched by Optuna, tracked in MLflow.

A thin front (as optuna's `Study` is) over the modules that do the work:
- `tune.state`: the sweep directory's `sweep_state.json` and its layout (`state.LAYOUT`);
- `tune.parent`: the sweep's parent MLflow run, whose child runs all the others are;
- `tune.search`: the Tune search (the Tuner, trials told from the archive, interruptions);
- `tune.summary`: the best trial, the study's tables and plots;
- `tune.confirm` and `tune.ablation`: the follow-up runs of the chosen configuration, trained
  by the one child-run executor `tune.child_runs`;
- `tune.roles`: what a sweep's runs must hold to count; `tune.same_config`: a run kept from
  before must have trained the configuration planned now.

The names other modules import from here are re-exported below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import htl_ray.tune.parent as parent
import htl_ray.tune.state as state
from htl_ray.config import ConfigError, ExperimentConfig
from htl_ray.tune.ablation import run_ablations
from htl_ray.tune.confirm import VERDICT_GROUPS, confirm_run_name, run_confirmation
from htl_ray.tune.roles import SCORED_ROLES, best_params, scored_key
from htl_ray.tune.search import TUNE_DIR, max_concurrent, run_search
from htl_ray.tune.space import Sweep
from htl_ray.tune.state import STATE_FILE, SweepState
from htl_ray.tune.study import TrialRecord

# what other modules import from here (htl_ray.protocol)
__all__ = ["SCORED_ROLES", "STATE_FILE", "VERDICT_GROUPS", "SweepOutcome", "best_params",
           "confirm_run_name", "run_sweep", "scored_key"]

logger = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    directory: Path
    parent_run_id: str
    tracking_uri: str
    best: TrialRecord | None
    records: list[TrialRecord]
    plots: dict[str, Path] = field(default_factory=dict)
    confirm_run_ids: dict[str, list[str]] = field(default_factory=dict)
    ablation_run_ids: dict[str, list[str]] = field(default_factory=dict)
    interrupted: bool = False


def _absolute(base: ExperimentConfig, uri: str, runs_dir: Path) -> dict[str, Any]:
    """The base config with every path absolute: trials run in other working directories."""
    raw = base.to_dict()
    raw["data"]["path"] = str(Path(base.data.path).resolve())
    if base.model.init_checkpoint:
        raw["model"]["init_checkpoint"] = str(Path(base.model.init_checkpoint).resolve())
    raw["run"]["storage_path"] = str(runs_dir)
    raw["tracking"]["uri"] = uri
    return raw


def run_sweep(sweep: Sweep, *, resume: bool = False, confirm: int = 0, ablate: bool = False,
              on_confirmed: Callable[[], None] | None = None) -> SweepOutcome:
    """Run (or with `resume`, continue) the sweep; then summarise it in its parent run and,
    with `confirm` = N, re-run the best config and its comparators with N seeds each, and
    with `ablate`, the sweep file's ablations of the best config, scored on val only
    (`on_confirmed` is called after each such run trained: hours apart on CPUs). Progress
    goes to the modules' loggers (`htl_ray.console`)."""
    from htl_ray import tracking
    from htl_ray.cluster import cpus_needed, join_cluster
    from htl_ray.train.preflight import preflight

    directory = sweep.directory
    state_path = state.path_in(directory)
    if state_path.is_file() and not resume:
        raise ConfigError(f"sweep.name: {directory} already holds a sweep; continue it with "
                          "--resume or choose another sweep.name")
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep to resume at {directory} ({STATE_FILE} missing)")
    preflight(sweep.base)
    held = state.read(state_path) if resume else None
    uri = (held and held.tracking_uri) or tracking.resolve_tracking_uri(sweep.base.tracking.uri)
    join_cluster(sweep.base, uri)   # may refuse the sweep: before a parent run
    if held is not None:
        parent_run_id = held.parent_run_id
        parent.resume(uri, parent_run_id)
        logger.info(f"[htl-ray] resuming sweep {directory} (MLflow parent run {parent_run_id})")
    else:
        parent_run_id = parent.start(sweep, uri)
        state.write(state_path, SweepState(parent_run_id, tracking_uri=uri,
                                           sweep_file=str(sweep.path.resolve()),
                                           stops_closed=True))
    base_raw = _absolute(sweep.base, uri, directory / "runs")
    try:
        import ray

        concurrency = max_concurrent(sweep, ray.cluster_resources().get("CPU", 1.0))
        s = sweep.settings
        logger.info(f"[htl-ray] sweep {s.name}: {s.num_samples} trials, {len(sweep.space)} "
                    f"parameters ({', '.join(sweep.space)}), Optuna TPE seed {s.seed}, "
                    f"{concurrency} at a time ({cpus_needed(sweep.base)} CPUs each), scheduler "
                    f"{s.scheduler}; MLflow {tracking.redact(uri)} parent run {parent_run_id}")
        if held is not None and held.from_archive and not (directory / TUNE_DIR).is_dir() \
                and parent.has_best(uri, parent_run_id):
            # swept on another machine (htl_ray.archive): its trials are results, not state
            best = parent.archived_best(sweep, uri, parent_run_id)
            logger.info(f"[htl-ray] sweep {s.name} was run elsewhere (archive "
                        f"{held.from_archive}); best trial {best.name}: its confirmation runs")
            outcome = SweepOutcome(directory, parent_run_id, uri, best, [])
        else:
            found = run_search(sweep, base_raw=base_raw, uri=uri, parent_run_id=parent_run_id,
                               resume=resume, concurrency=concurrency,
                               stops_closed=bool(held and held.stops_closed))
            outcome = SweepOutcome(directory, parent_run_id, uri, found.best, found.records,
                                   found.plots, interrupted=found.interrupted)
            if outcome.interrupted:
                return outcome
        follow_up = {"base_raw": base_raw, "parent_run_id": parent_run_id,
                     "runs_dir": directory / "runs", "on_trained": on_confirmed}
        if confirm and outcome.best is not None:
            outcome.confirm_run_ids = run_confirmation(sweep, outcome.best, seeds=confirm,
                                                       **follow_up)
        if ablate and outcome.best is not None:
            outcome.ablation_run_ids = run_ablations(sweep, outcome.best, **follow_up)
    except BaseException:
        parent.end(uri, parent_run_id, "FAILED")
        raise
    parent.end(uri, parent_run_id, "FINISHED")
    return outcome
