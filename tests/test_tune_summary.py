"""htl_ray.tune.summary: the best trial picked by the sweep's mode among those scored without
error, and a sweep summarised into files and into its parent run in a real MLflow store —
metrics, best-trial tags, artifacts, and the `best.*` params only once the summary is final
(an interrupted sweep's best so far is not its choice)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from sweep_files import write_sweep

from htl_ray import tracking
from htl_ray.config import load_config
from htl_ray.tracking.schema import BEST_TRIAL_ID_TAG, BEST_TRIAL_TAG
from htl_ray.tune.roles import best_params
from htl_ray.tune.space import load_sweep
from htl_ray.tune.study import TrialRecord
from htl_ray.tune.summary import best_record, summarise

SPACE = {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0},
         "htl.attention": {"type": "categorical", "choices": ["reweight", "oversample"]}}


def _records() -> list[TrialRecord]:
    return [
        TrialRecord("t1", "trial_1", {"htl.lam": 1.0, "htl.attention": "reweight"},
                    [0.5, 0.7, 0.6], True, mlflow_run_id="run-1"),
        # stopped early by ASHA, yet its best epoch is the best of the sweep
        TrialRecord("t2", "trial_2", {"htl.lam": 3.5, "htl.attention": "oversample"},
                    [0.6, 0.8], False, mlflow_run_id="run-2"),
        # its one value came before it failed: an errored trial is never the best
        TrialRecord("t3", "trial_3", {"htl.lam": 2.0, "htl.attention": "reweight"},
                    [0.95], False, error="RayTaskError: CUDA out of memory"),
    ]


# ------------------------------------------------------------------ the best trial


def test_the_best_trial_is_the_best_scored_one_by_the_sweeps_mode():
    records = _records()
    assert best_record(records, "max").name == "trial_2"
    # minimising: each trial's value is its lowest epoch (0.5 and 0.6)
    assert best_record(records, "min").name == "trial_1"


def test_trials_without_a_value_are_not_candidates():
    nan = TrialRecord("n", "nan only", {}, [math.nan, math.nan], True)
    none = TrialRecord("e", "no epochs", {}, [], False)
    failed = TrialRecord("f", "failed", {}, [0.9], True, error="boom")
    assert best_record([nan, none, failed], "max") is None
    assert best_record([], "min") is None
    low = TrialRecord("l", "low", {}, [math.nan, 0.2], True)       # a NaN epoch is skipped
    assert best_record([nan, low, none], "max") is low


# ------------------------------------------------------------------ the summary


@pytest.fixture
def sweep(tmp_path):
    return load_sweep(write_sweep(tmp_path, SPACE, {"name": "s", "metric": "val/dice"}))


def _run(uri: str, run_id: str):
    store = tracking.client(uri)
    run = store.get_run(run_id)
    artifacts = sorted(a.path for a in store.list_artifacts(run_id)) + sorted(
        a.path for a in store.list_artifacts(run_id, "plots"))
    return run, artifacts


def test_a_sweep_is_summarised_into_files_and_its_parent_run(sweep, tracking_uri, tmp_path):
    parent = tracking.start_run(tracking_uri, "e", "sweep s", {}, {"htl.role": "sweep"})
    out = tmp_path / "summary"

    # interrupted: the best so far is shown, but not recorded as the sweep's choice
    best, plots = summarise(sweep, _records()[:1], out_dir=out, uri=tracking_uri,
                            parent_run_id=parent, final=False)
    assert best.name == "trial_1"
    run, _ = _run(tracking_uri, parent)
    assert best_params(run.data.params) == {}
    assert run.data.metrics == {"sweep/trials": 1.0, "sweep/finished": 1.0,
                                "best/val/dice": 0.7}
    assert run.data.tags[BEST_TRIAL_TAG] == "trial_1"

    # resumed and finished: every trial, and now the choice as best.* params
    best, plots = summarise(sweep, _records(), out_dir=out, uri=tracking_uri,
                            parent_run_id=parent)
    assert (best.name, best.trial_id) == ("trial_2", "t2")
    run, artifacts = _run(tracking_uri, parent)
    assert best_params(run.data.params) == {"htl.attention": "oversample", "htl.lam": "3.5"}
    assert run.data.metrics == {"sweep/trials": 3.0, "sweep/finished": 1.0,
                                "best/val/dice": 0.8}
    assert run.data.tags[BEST_TRIAL_TAG] == "trial_2"
    assert run.data.tags[BEST_TRIAL_ID_TAG] == "t2"
    assert artifacts == ["best_config.yaml", "plots", "study_summary.md", "trials.csv",
                         *sorted(f"plots/{p.name}" for p in plots.values())]
    assert set(plots) == {"parallel_coordinates", "param_importances", "optimization_history"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.values())

    chosen = load_config(out / "best_config.yaml")
    assert (chosen.htl.lam, chosen.htl.attention, chosen.train.epochs) == (3.5, "oversample", 3)
    table = pd.read_csv(out / "trials.csv").set_index("trial")
    assert table["status"].to_dict() == {"trial_1": "finished", "trial_2": "stopped early",
                                         "trial_3": "error"}
    assert table["val/dice"].to_dict() == {"trial_1": 0.7, "trial_2": 0.8, "trial_3": 0.95}
    assert table["mlflow_run_id"]["trial_2"] == "run-2"
    summary = (out / "study_summary.md").read_text()
    assert "Best: **trial_2** — val/dice = 0.8000" in summary
    assert "Trials: 3 (1 finished, 1 stopped early, 1 failed)." in summary


def test_a_sweep_with_no_scored_trial_has_no_best(sweep, tracking_uri, tmp_path):
    parent = tracking.start_run(tracking_uri, "e", "sweep s", {}, {"htl.role": "sweep"})
    failed = [TrialRecord("t1", "trial_1", {"htl.lam": 1.0, "htl.attention": "reweight"}, [],
                          False, error="RayTaskError: data.path: no dataset")]
    best, _ = summarise(sweep, failed, out_dir=tmp_path / "o", uri=tracking_uri,
                        parent_run_id=parent)
    assert best is None
    run, artifacts = _run(tracking_uri, parent)
    assert run.data.metrics == {"sweep/trials": 1.0, "sweep/finished": 0.0}
    assert BEST_TRIAL_TAG not in run.data.tags and best_params(run.data.params) == {}
    assert "best_config.yaml" not in artifacts
    assert not (tmp_path / "o" / "best_config.yaml").exists()
    assert {"study_summary.md", "trials.csv"} <= set(artifacts)
    assert "Trials: 1 (0 finished, 0 stopped early, 1 failed)." in \
        (tmp_path / "o" / "study_summary.md").read_text()
