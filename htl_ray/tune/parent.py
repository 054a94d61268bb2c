"""A sweep's parent MLflow run: its life (started, resumed, ended, or cut short) and the best
configuration it records once the search has chosen one.

One parent run per sweep; every trial, confirmation and ablation run is its child run
(`mlflow.parentRunId`), so the MLflow UI nests them.
"""

from __future__ import annotations

import time
from typing import Any

from htl_ray.config import ConfigError
from htl_ray.tracking.schema import (
    BEST_TRIAL_ID_TAG,
    BEST_TRIAL_TAG,
    GIT_COMMIT_TAG,
    INTERRUPTED_TAG,
    RESUMED_AT_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    SWEEP_TAG,
)
from htl_ray.tune.prior_trials import typed_params
from htl_ray.tune.roles import best_params
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import TrialRecord


def parent_params(sweep: Sweep) -> dict[str, Any]:
    """The parent run's params: the sweep's settings, its space and where its base came from."""
    params = {f"sweep.{k}": v for k, v in vars(sweep.settings).items()}
    params.update({f"space.{k}": repr(d) for k, d in sweep.space.items()})
    params["sweep.base"] = sweep.base_source or "(defaults)"
    params["sweep.base_overrides"] = " ".join(sweep.base_overrides)
    return params


def start(sweep: Sweep, uri: str) -> str:
    """A new parent run (RUNNING); returns its id."""
    from htl_ray import tracking

    return tracking.start_run(
        uri, sweep.base.tracking.experiment, f"sweep {sweep.settings.name}",
        parent_params(sweep), {ROLE_TAG: SWEEP_ROLE, SWEEP_TAG: sweep.settings.name,
                               GIT_COMMIT_TAG: tracking.git_commit()})


def resume(uri: str, parent_run_id: str) -> None:
    """The parent run of a continued sweep: RUNNING again, with when it was resumed."""
    from htl_ray import tracking

    tracking.set_tags(uri, parent_run_id, {RESUMED_AT_TAG: time.strftime("%FT%T")})
    tracking.client(uri).update_run(parent_run_id, status="RUNNING")


def end(uri: str, parent_run_id: str, status: str) -> None:
    from htl_ray import tracking

    tracking.end_run(uri, parent_run_id, status)


def end_interrupted(uri: str, parent_run_id: str) -> None:
    """A search cut short (Ctrl-C): KILLED, and tagged so (`--resume` continues it)."""
    from htl_ray import tracking

    tracking.set_tags(uri, parent_run_id, {INTERRUPTED_TAG: "true"})
    tracking.end_run(uri, parent_run_id, "KILLED")


def has_best(uri: str, parent_run_id: str) -> bool:
    """Whether the parent run records its chosen configuration (every trial has ended)."""
    from htl_ray import tracking

    return bool(best_params(tracking.client(uri).get_run(parent_run_id).data.params))


def archived_best(sweep: Sweep, uri: str, parent_run_id: str) -> TrialRecord:
    """The best trial as its sweep's parent run recorded it (as the search space's types):
    a sweep searched on another machine, imported from the protocol archive."""
    from htl_ray import tracking

    run = tracking.client(uri).get_run(parent_run_id)
    params = typed_params(sweep, best_params(run.data.params))
    if not params:
        raise ConfigError(f"MLflow run {parent_run_id}: the sweep's parent run records no best "
                          "configuration (best.* params); was the sweep finished?")
    tags = run.data.tags
    return TrialRecord(tags.get(BEST_TRIAL_ID_TAG, "?"), tags.get(BEST_TRIAL_TAG, "?"),
                       params, [], True)
