"""Closing the MLflow runs of trials Tune stops, against a real MLflow SQLite store: a trial the
scheduler stops is closed as stopped early even in a sitting that is interrupted afterwards;
what is still training at an interruption is closed as interrupted, an unrecorded one as
orphaned; a trial that finished on its own is left alone."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from htl_ray import tracking
from htl_ray.tune.trial import FINISHED_KEY
from htl_ray.tune.trial_runs import (
    CloseStoppedTrialRuns,
    close_open_trial_runs,
    open_trial_ids,
)


def _trials(uri: str, ids: list[str]) -> tuple[str, dict[str, str]]:
    parent = tracking.start_run(uri, "tr", "sweep", {}, {"htl.role": "sweep"})
    runs = {t: tracking.start_run(uri, "tr", t, {}, {"mlflow.parentRunId": parent,
                                                     "htl.role": "trial", "htl.trial_id": t})
            for t in ids}
    return parent, runs


def _state(client: MlflowClient, run_id: str) -> tuple[str, set[str]]:
    run = client.get_run(run_id)
    flags = {k for k in ("htl.stopped_early", "htl.interrupted", "htl.orphaned")
             if run.data.tags.get(k) == "true"}
    return run.info.status, flags


def test_a_stop_then_an_interruption_are_told_apart(tracking_uri):
    uri, client = tracking_uri, MlflowClient(tracking_uri)
    parent, runs = _trials(uri, ["asha", "done", "busy", "ghost"])
    client.set_terminated(runs["done"], "FINISHED")         # the trial ended its own run
    # Tune pickles its callbacks with the experiment state: a resumed sweep keeps this one
    callback = pickle.loads(pickle.dumps(CloseStoppedTrialRuns(uri, parent)))
    callback.on_trial_complete(iteration=3, trials=[], trial=SimpleNamespace(
        trial_id="asha", last_result={"val/dice": 0.4, "training_iteration": 4}))
    callback.on_trial_complete(iteration=5, trials=[], trial=SimpleNamespace(
        trial_id="done", last_result={"val/dice": 0.8, FINISHED_KEY: 1}))
    assert _state(client, runs["asha"]) == ("KILLED", {"htl.stopped_early"})
    assert _state(client, runs["done"]) == ("FINISHED", set())
    assert _state(client, runs["busy"]) == ("RUNNING", set())
    # then Ctrl-C: "ghost" was started but Tune never recorded it
    assert open_trial_ids(uri, parent) == {"busy", "ghost"}
    closed = close_open_trial_runs(uri, parent, interrupted=True,
                                   known={"asha", "done", "busy"})
    assert closed == {"htl.interrupted": 1, "htl.orphaned": 1}
    assert _state(client, runs["asha"]) == ("KILLED", {"htl.stopped_early"})
    assert _state(client, runs["busy"]) == ("KILLED", {"htl.interrupted"})
    assert _state(client, runs["ghost"]) == ("KILLED", {"htl.orphaned"})


def test_runs_left_open_by_an_uninterrupted_sweep_were_stopped_early(tracking_uri):
    """A sweep restored from state written before the callback existed has none."""
    uri, client = tracking_uri, MlflowClient(tracking_uri)
    parent, runs = _trials(uri, ["a", "b"])
    client.set_terminated(runs["a"], "FINISHED")
    assert close_open_trial_runs(uri, parent, interrupted=False, known={"a", "b"}) == {
        "htl.stopped_early": 1}
    assert _state(client, runs["a"]) == ("FINISHED", set())
    assert _state(client, runs["b"]) == ("KILLED", {"htl.stopped_early"})
    assert close_open_trial_runs(uri, parent, interrupted=False, known={"a", "b"}) == {}


def test_a_stop_mlflow_cannot_record_is_a_warning_not_a_trial_error(tmp_path):
    """Tune turns an exception in a callback into a trial ERROR (and re-runs the trial on
    --resume): the stop is left for close_open_trial_runs instead."""
    import pytest

    callback = CloseStoppedTrialRuns(f"sqlite:///{tmp_path / 'missing' / 'no.db'}", "nope")
    with pytest.warns(UserWarning, match="could not close the MLflow run of trial t1"):
        callback.on_trial_complete(iteration=1, trials=[], trial=SimpleNamespace(
            trial_id="t1", last_result={"training_iteration": 2}))
