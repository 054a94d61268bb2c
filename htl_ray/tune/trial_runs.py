"""Closing the MLflow runs of trials that Tune stops: their trial function is killed before its
run can end, so the driver ends it, and says why (the results page counts trials by it).

- a trial the scheduler (ASHA) stops is closed as it stops: `htl.stopped_early`;
- at the end of an interrupted sweep, a trial still training is `htl.interrupted` (`--resume`
  continues it in the same run);
- a run whose trial Tune never recorded (the driver was killed before Tune saved its state) is
  `htl.orphaned`: Tune runs its suggestion again as a new trial.
"""

from __future__ import annotations

import warnings
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from htl_ray.tracking import client as tracking_client
from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import (
    INTERRUPTED_TAG,
    ORPHANED_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_TAG,
)
from htl_ray.tune.trial import (
    FINISHED_KEY,
)


def _open_runs(client: MlflowClient, parent_run_id: str, trial_id: str | None = None):
    parent = client.get_run(parent_run_id)
    return search(client, parent.info.experiment_id,
                  RunQuery(parent_run_id=parent_run_id, status="RUNNING", trial_id=trial_id))


def _close(client: MlflowClient, run_id: str, tag: str) -> None:
    client.set_tag(run_id, tag, "true")
    client.set_terminated(run_id, "KILLED")


class CloseStoppedTrialRuns(Callback):
    """Tune calls `on_trial_complete` for a trial that returned on its own (its last result
    carries FINISHED_KEY: its run already ended FINISHED) and for one the scheduler stopped,
    never for one an interruption cut short; so a stop is told apart from a Ctrl-C even when
    both happen in the same sitting (`tune.search.was_interrupted`).

    Tune pickles its callbacks into the sweep's saved state and restores them on `--resume`:
    this class must keep its import path and hold only plain values."""

    def __init__(self, uri: str, parent_run_id: str) -> None:
        self.uri, self.parent_run_id = uri, parent_run_id

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info) -> None:
        if (trial.last_result or {}).get(FINISHED_KEY):
            return
        try:
            client = tracking_client(self.uri)
            for run in _open_runs(client, self.parent_run_id, trial.trial_id):
                _close(client, run.info.run_id, STOPPED_EARLY_TAG)
        except Exception as e:    # noqa: BLE001 — Tune would turn the stop into a trial ERROR
            warnings.warn(f"htl-ray: could not close the MLflow run of trial {trial.trial_id} "
                          f"stopped by the scheduler ({e}); it is closed after the search",
                          stacklevel=1)


def open_trial_ids(uri: str, parent_run_id: str) -> set[str]:
    """Trial ids whose runs are still RUNNING."""
    return {r.data.tags.get(TRIAL_TAG) for r in _open_runs(tracking_client(uri), parent_run_id)}


def close_open_trial_runs(uri: str, parent_run_id: str, *, interrupted: bool,
                          known: set[str]) -> dict[str, int]:
    """After the search: close every trial run still RUNNING, as interrupted (the sweep was),
    stopped early (a sweep restored without the callback, or a stop the callback could not
    record), or orphaned (its trial id not in `known`: the driver died before Tune recorded the
    trial, and Tune runs its suggestion again). Returns how many got each tag."""
    client = tracking_client(uri)
    closed: dict[str, int] = {}
    for run in _open_runs(client, parent_run_id):
        tag = (ORPHANED_TAG if run.data.tags.get(TRIAL_TAG) not in known
               else INTERRUPTED_TAG if interrupted else STOPPED_EARLY_TAG)
        _close(client, run.info.run_id, tag)
        closed[tag] = closed.get(tag, 0) + 1
    return closed
