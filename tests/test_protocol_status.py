"""What MLflow holds of a protocol setting (`htl_ray.protocol.status`), read from a real SQLite
MLflow store with runs made by hand; no Ray."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient


@pytest.mark.parametrize("sweep_ended", [True, False])
def test_trials_cut_short_count_once_their_sweep_has_ended(tmp_path, tracking_uri,
                                                           sweep_ended):
    """A trial ASHA stopped just before a Ctrl-C was tagged interrupted by older code; once the
    sweep has ended (its parent records best.* params) Tune runs none of its trials again, so
    it has ended too. A run Tune re-ran as a new trial (orphaned) never counts."""
    from htl_ray import tracking
    from htl_ray.protocol.page import setting_section
    from htl_ray.protocol.status import setting_status
    from htl_ray.tune.space import load_sweep
    from htl_ray.tune.sweep import STATE_FILE

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": [f"data.path={tmp_path / 'data'}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=count", "train.epochs=8"],
        "sweep": {"name": "count", "num_samples": 3, "storage_path": str(tmp_path)},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}}}))
    sweep = load_sweep(path)
    client = MlflowClient(tracking_uri)
    tags = {"htl.sweep": "count"}
    parent = tracking.start_run(tracking_uri, "count", "sweep", {"sweep.num_samples": 3},
                                {**tags, "htl.role": "sweep"})
    if sweep_ended:
        client.log_param(parent, "best.htl.lam", "1.5")
    for name, status, flag, epochs in (("done", "FINISHED", None, 8),
                                       ("cut", "KILLED", "htl.interrupted", 4),
                                       ("ghost", "KILLED", "htl.orphaned", 8)):
        run = tracking.start_run(tracking_uri, "count", name, {"train.epochs": 8},
                                 {**tags, "htl.role": "trial", "mlflow.parentRunId": parent,
                                  **({flag: "true"} if flag else {})})
        for step in range(epochs):
            tracking.log_metrics(tracking_uri, run, {"val/dice": 0.5}, step)
        client.set_terminated(run, status)
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    status = setting_status(sweep, tracking_uri)
    assert status.trials_finished == (2 if sweep_ended else 1)
    assert status.parent_run_id == parent and status.trials_asked == 3
    assert status.best_params == ({"htl.lam": "1.5"} if sweep_ended else {})
    # no confirmation run yet: the setting's compute is a running total
    assert "; compute so far " in setting_section(sweep, uri=tracking_uri, seeds=1)[0]


def test_a_sweep_not_started_has_no_runs(tmp_path, tracking_uri):
    from htl_ray.protocol.status import groups, setting_status
    from htl_ray.tune.space import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": [f"data.path={tmp_path / 'data'}", f"tracking.uri={tracking_uri}"],
        "sweep": {"name": "fresh", "num_samples": 4, "storage_path": str(tmp_path),
                  "comparators": ["erm", "random"]},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}}}))
    sweep = load_sweep(path)
    status = setting_status(sweep, tracking_uri)
    assert (status.parent_run_id, status.trials_finished, status.trials_asked) == (None, 0, 4)
    assert groups(sweep) == ["best", "erm", "random"]
    assert not status.complete(groups(sweep), 1) and status.complete([], 1)


def test_once_chosen_the_groups_are_those_the_confirmation_plan_trains(tmp_path):
    """A comparator that makes the chosen configuration again is not planned (it would be
    `best` twice), so the status must not wait for it either: else the setting is never
    complete and every sitting re-enters the sweep."""
    from htl_ray.protocol.status import groups
    from htl_ray.tune.confirm import confirmation_plan
    from htl_ray.tune.space import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": ["htl.method=htl"],
        "sweep": {"name": "r2", "storage_path": str(tmp_path),
                  "comparators": {"erm": ["htl.method=erm"], "tta": ["htl.method=tta"]}},
        "space": {"htl.method": {"type": "categorical", "choices": ["htl", "tta"]}}}))
    sweep = load_sweep(path)
    assert groups(sweep) == ["best", "erm", "tta"]                 # nothing chosen yet
    for chosen, expected in (("tta", ["best", "erm"]), ("htl", ["best", "erm", "tta"])):
        assert groups(sweep, {"htl.method": chosen}) == expected    # as MLflow records it
        plan = confirmation_plan(sweep, {"htl.method": chosen}, seeds=1,
                                 base_raw=sweep.base.to_dict())
        assert sorted({p.group for p in plan}) == sorted(expected)


def test_a_reused_run_counts_as_a_seed_but_its_hours_are_the_earlier_rounds(tmp_path,
                                                                           tracking_uri):
    from htl_ray import tracking
    from htl_ray.protocol.page import setting_section
    from htl_ray.protocol.status import setting_status
    from htl_ray.tune.space import load_sweep
    from htl_ray.tune.sweep import STATE_FILE

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": [f"data.path={tmp_path / 'data'}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=hours"],
        "sweep": {"name": "later", "num_samples": 1, "storage_path": str(tmp_path)},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}}}))
    sweep = load_sweep(path)
    client = MlflowClient(tracking_uri)
    tags = {"htl.sweep": "later"}
    parent = tracking.start_run(tracking_uri, "hours", "sweep", {}, {**tags, "htl.role": "sweep"})
    client.log_param(parent, "best.htl.lam", "1.5")
    for group, reused, hours in (("best", False, 2.0), ("erm", True, 5.0)):
        run = client.create_run(client.get_experiment_by_name("hours").experiment_id,
                                start_time=1_000, tags={
                                    **tags, "htl.role": "confirm", "htl.group": group,
                                    "mlflow.parentRunId": parent,
                                    **({"htl.reused_from": "r1"} if reused else {})})
        client.log_param(run.info.run_id, "run.seed", "0")
        client.log_metric(run.info.run_id, "best/test/dice", 0.8)
        client.set_terminated(run.info.run_id, "FINISHED", end_time=1_000 + int(hours * 3.6e6))
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    status = setting_status(sweep, tracking_uri)
    assert status.confirm_finished == {"best": 1, "erm": 1}
    assert (status.compute_hours, status.reused) == (pytest.approx(2.0), 1)
    assert "compute 2.0 h (wall clock of its runs; 1 confirmation runs reused from an " \
           "earlier round, their hours not counted)" in setting_section(
               sweep, uri=tracking_uri, seeds=1)[0]
