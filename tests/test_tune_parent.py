"""htl_ray.tune.parent, against a real MLflow SQLite store (no Ray): the sweep's parent run's
params and tags, its life (started, ended, cut short and tagged, resumed), whether it records
a chosen configuration, and that configuration read back in the search space's types — or,
when the sweep never finished, an error naming the run."""

from __future__ import annotations

import re

import pytest
from mlflow.entities import Param
from sweep_files import write_sweep

from htl_ray import tracking
from htl_ray.config import ConfigError
from htl_ray.tracking.schema import (
    BEST_TRIAL_ID_TAG,
    BEST_TRIAL_TAG,
    GIT_COMMIT_TAG,
    INTERRUPTED_TAG,
    RESUMED_AT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
)
from htl_ray.tune import parent
from htl_ray.tune.space import load_sweep

SPACE = {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0},
         "htl.attention": {"type": "categorical", "choices": ["reweight", "oversample"]},
         "htl.warmup_epochs": {"type": "int", "low": 1, "high": 3}}


@pytest.fixture
def sweep(tmp_path):
    (tmp_path / "base.yaml").write_text("tracking:\n  experiment: lesions-e1\n")
    return load_sweep(write_sweep(tmp_path, SPACE, {"name": "s1", "num_samples": 4},
                                  base="base.yaml"))


def _run(uri, run_id):
    return tracking.client(uri).get_run(run_id)


def test_the_parent_params_are_the_settings_the_space_and_the_base(sweep, tmp_path):
    params = parent.parent_params(sweep)
    settings = {k.removeprefix("sweep."): v for k, v in params.items()
                if k.startswith("sweep.") and k not in ("sweep.base", "sweep.base_overrides")}
    assert settings == vars(sweep.settings)
    assert (params["sweep.name"], params["sweep.num_samples"], params["sweep.mode"]) == \
        ("s1", 4, "max")
    assert params["sweep.base"] == str(tmp_path / "base.yaml")
    assert params["sweep.base_overrides"] == "train.epochs=3"
    assert {k: v for k, v in params.items() if k.startswith("space.")} == {
        "space.htl.attention": "CategoricalDistribution(choices=('reweight', 'oversample'))",
        "space.htl.lam": "FloatDistribution(high=4.0, log=False, low=0.5, step=None)",
        "space.htl.warmup_epochs": "IntDistribution(high=3, log=False, low=1, step=1)"}


def test_a_sweep_without_a_base_file_says_defaults(tmp_path):
    plain = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 1, "high": 2}}))
    assert parent.parent_params(plain)["sweep.base"] == "(defaults)"


def test_a_parent_run_starts_running_in_the_base_configs_experiment(sweep, tracking_uri):
    run_id = parent.start(sweep, tracking_uri)
    run = _run(tracking_uri, run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "sweep s1"
    experiment = tracking.client(tracking_uri).get_experiment(run.info.experiment_id)
    assert experiment.name == "lesions-e1"
    assert run.data.tags[ROLE_TAG] == "sweep" and run.data.tags[SWEEP_TAG] == "s1"
    assert run.data.tags[GIT_COMMIT_TAG] == tracking.git_commit()
    assert run.data.params["sweep.num_samples"] == "4"                  # MLflow keeps text
    assert run.data.params["sweep.comparators"] == "['erm']"
    assert set(run.data.params) == set(parent.parent_params(sweep))


def test_a_parent_run_is_ended_cut_short_and_resumed(sweep, tracking_uri):
    run_id = parent.start(sweep, tracking_uri)
    parent.end_interrupted(tracking_uri, run_id)
    run = _run(tracking_uri, run_id)
    assert run.info.status == "KILLED" and run.data.tags[INTERRUPTED_TAG] == "true"
    assert RESUMED_AT_TAG not in run.data.tags

    parent.resume(tracking_uri, run_id)
    run = _run(tracking_uri, run_id)
    assert run.info.status == "RUNNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", run.data.tags[RESUMED_AT_TAG])

    parent.end(tracking_uri, run_id, "FINISHED")
    run = _run(tracking_uri, run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time


def test_the_chosen_configuration_is_read_back_in_the_spaces_types(sweep, tracking_uri):
    run_id = parent.start(sweep, tracking_uri)
    assert parent.has_best(tracking_uri, run_id) is False
    with pytest.raises(ConfigError, match=rf"^MLflow run {run_id}: the sweep's parent run "
                                          r"records no best configuration \(best\.\* params\); "
                                          "was the sweep finished\\?$"):
        parent.archived_best(sweep, tracking_uri, run_id)

    # what tune.summary.summarise records once every trial has ended
    tracking.client(tracking_uri).log_batch(run_id, params=[
        Param("best.htl.lam", "2.25"), Param("best.htl.attention", "oversample"),
        Param("best.htl.warmup_epochs", "3"), Param("best.train.lr", "0.01")])
    assert parent.has_best(tracking_uri, run_id) is True
    best = parent.archived_best(sweep, tracking_uri, run_id)
    # typed as the space's distributions, keys outside the space left out
    assert best.params == {"htl.lam": 2.25, "htl.attention": "oversample",
                           "htl.warmup_epochs": 3}
    assert type(best.params["htl.warmup_epochs"]) is int
    assert (best.trial_id, best.name) == ("?", "?")            # no best-trial tags: unknown
    assert best.finished and best.history == [] and best.error is None

    tracking.set_tags(tracking_uri, run_id, {BEST_TRIAL_TAG: "trial_7 lam=2.25",
                                             BEST_TRIAL_ID_TAG: "a1b2_00007"})
    best = parent.archived_best(sweep, tracking_uri, run_id)
    assert (best.trial_id, best.name) == ("a1b2_00007", "trial_7 lam=2.25")
    assert sweep.config_for(best.params).htl.lam == 2.25           # a config it can rebuild
