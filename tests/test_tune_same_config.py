"""A confirmation or ablation run kept from before must have trained the configuration planned
now: the run directory's config, or the params of a run finished elsewhere."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from htl_ray.config import ConfigError, load_config
from htl_ray.run_dir import RunDir
from htl_ray.tune.same_config import refuse_changed_mlflow_run, refuse_changed_run_dir


def test_a_confirmation_run_on_disk_with_other_settings_is_refused_unless_only_speed_differs(
        tmp_path):
    planned = load_config(None, ["htl.method=htl", "htl.lam=2.0", "run.name=confirm-best-s0"])
    run = RunDir(tmp_path / "confirm-best-s0")
    state = run.state_file
    refuse_changed_run_dir(run, planned)           # nothing on disk: nothing to refuse
    state.parent.mkdir()
    # trained earlier with a slower scorer, more restarts allowed, under another run name and
    # tracking server: the same run
    state.write_text(json.dumps({"config": load_config(None, [
        "htl.method=htl", "htl.lam=2.0", "htl.scorer_threads=1", "htl.scorer_batch_size=8",
        "train.max_failures=2", "run.name=old",
        "tracking.uri=sqlite:///elsewhere.db"]).to_dict()}))
    refuse_changed_run_dir(run, planned)
    # trained with another λ: mixing its seeds with new ones would compare two configurations
    state.write_text(json.dumps({"config": load_config(None, [
        "htl.method=htl", "htl.lam=1.0"]).to_dict()}))
    with pytest.raises(ConfigError, match=r"confirm-best-s0: this confirmation run .*"
                                          r"\(htl.lam differ\)"):
        refuse_changed_run_dir(run, planned)
    with pytest.raises(ConfigError, match=r"this ablation run .*runs/ablation-\*"):
        refuse_changed_run_dir(run, planned, "ablation")


def _mlflow_run(params: dict[str, str], tags: dict[str, str] | None = None):
    return SimpleNamespace(info=SimpleNamespace(run_id="r1"),
                           data=SimpleNamespace(params=params, tags=tags or {}))


def test_a_run_finished_elsewhere_is_compared_on_the_keys_it_recorded(tmp_path):
    planned = load_config(None, ["htl.method=htl", "htl.lam=2.0",
                                 f"data.path={tmp_path / 'data'}"])
    recorded = {k: str(v) for k, v in planned.flat().items()}
    # another machine's paths, run name and tracking store; a key newer than the run: the same
    elsewhere = {**recorded, "data.path": "/other/machine/data", "run.name": "x",
                 "tracking.uri": "http://elsewhere"}
    del elsewhere["htl.lam"]
    refuse_changed_mlflow_run(_mlflow_run(elsewhere), planned, "confirm-best-s0")
    with pytest.raises(ConfigError, match=r"MLflow run r1 \(confirm-best-s0, finished "
                                          r"elsewhere\) .*\(htl.lam differ\)"):
        refuse_changed_mlflow_run(_mlflow_run({**recorded, "htl.lam": "1.0"}), planned,
                                  "confirm-best-s0")
