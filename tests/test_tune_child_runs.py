"""The child-run executor's lookups in a real MLflow store: a follow-up run finished elsewhere
is found by its sweep, role, group, seed and parent — also when the sweep's name holds quotes —
and only when it was scored. (Training child runs end to end: tests/test_protocol_runner.py.)"""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from htl_ray import tracking
from htl_ray.config import ConfigError
from htl_ray.run_dir import RunDir
from htl_ray.tracking.schema import GROUP_TAG, PARENT_TAG, ROLE_TAG, SWEEP_TAG
from htl_ray.tune.child_runs import PlannedRun, finished_elsewhere, finished_here
from htl_ray.tune.confirm import confirmation_plan
from htl_ray.tune.space import load_sweep

NAME = 'it\'s "ours"'          # both quotes: more than MLflow's filter grammar can say


def _sweep(tmp_path, uri, name=NAME):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": ["train.epochs=2", "htl.method=htl", f"tracking.uri={uri}",
                      "tracking.experiment=e"],
        "sweep": {"name": name, "storage_path": str(tmp_path / "sweeps")},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0}}}))
    return load_sweep(path)


def _run(uri, planned: PlannedRun, sweep_name, parent, metrics, role="confirm", **params):
    run_id = tracking.start_run(uri, "e", planned.name,
                                {**planned.config.flat(), **params},
                                {SWEEP_TAG: sweep_name, ROLE_TAG: role,
                                 GROUP_TAG: planned.group, PARENT_TAG: parent})
    if metrics:
        tracking.log_metrics(uri, run_id, metrics, 0)
    MlflowClient(uri).set_terminated(run_id, "FINISHED")
    return run_id


def test_a_scored_run_of_this_sweep_finished_elsewhere_is_found(tmp_path, tracking_uri):
    sweep = _sweep(tmp_path, tracking_uri)
    best, erm = confirmation_plan(sweep, {"htl.lam": 1.5}, seeds=1,
                                  base_raw=sweep.base.to_dict())
    assert finished_elsewhere(sweep, best, parent_run_id="p") is None     # no experiment yet
    scored = {"best/test/dice": 0.8}
    # not it: another sweep whose name a loose filter would match, another parent, unscored
    _run(tracking_uri, best, "it's", "p", scored)
    _run(tracking_uri, best, NAME, "q", scored)
    _run(tracking_uri, erm, NAME, "p", {"best/val/dice": 0.8})
    assert finished_elsewhere(sweep, best, parent_run_id="p") is None
    assert finished_elsewhere(sweep, erm, parent_run_id="p") is None
    found = _run(tracking_uri, best, NAME, "p", scored)
    assert finished_elsewhere(sweep, best, parent_run_id="p") == found
    assert finished_elsewhere(sweep, best, parent_run_id="p", role="ablation") is None
    # the same run planned with another seed is not it either
    assert finished_elsewhere(sweep, best._replace(seed=1), parent_run_id="p") is None
    # ... and one that trained another configuration is refused, not kept
    changed = best._replace(config=sweep.config_for({"htl.lam": 2.0}, ["run.seed=0"]))
    with pytest.raises(ConfigError, match=r"finished elsewhere\) .*htl.lam"):
        finished_elsewhere(sweep, changed, parent_run_id="p")


def test_a_run_directory_without_a_run_state_is_not_finished(tmp_path):
    assert finished_here(RunDir(tmp_path / "confirm-best-s0")) is None
