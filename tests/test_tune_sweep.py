"""A real 2-trial sweep on 2 CPUs whose driver is killed part-way and resumed: every trial ends
done exactly once, under one MLflow parent run with 2 child runs and the study's plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from htl_ray.tune import load_sweep, run_sweep
from htl_ray.tune.state import STATE_FILE


def _children(client: MlflowClient, parent_run_id: str, status: str | None = None):
    exp = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([exp], query)


def _tiny_sweep_file(tmp_path: Path, synth_dataset, tracking_uri: str, epochs: int,
                     trials: int) -> Path:
    """A sweep of tiny trials over lr and λ, one at a time (on 2 cores two concurrent trials
    each take 3× longer)."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "overrides": [f"data.path={synth_dataset}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=sweeps", f"train.epochs={epochs}",
                      "data.limit_train=16", "data.batch_size=8",
                      "model.decoder_channels=[16,8,8,4,4]", "scaling.num_workers=1",
                      "scaling.resources_per_worker={CPU: 1}"],
        "sweep": {"name": "tiny", "num_samples": trials, "seed": 3, "max_concurrent": 1,
                  "storage_path": str(tmp_path / "sweeps")},
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  "htl.lam": {"type": "float", "low": 0.5, "high": 2.0}},
    }))
    return sweep_file


def test_sweep_killed_and_resumed_runs_every_trial_exactly_once(ray_cluster, synth_dataset,
                                                               tmp_path, tracking_uri,
                                                               fresh_store, capsys):
    sweep_file = _tiny_sweep_file(tmp_path, synth_dataset, tracking_uri, epochs=2, trials=2)
    directory = tmp_path / "sweeps" / "tiny"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "htl_ray.cli", "tune", str(sweep_file)],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(tracking_uri)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None:
            if (directory / STATE_FILE).is_file():
                parent = yaml.safe_load((directory / STATE_FILE).read_text())["parent_run_id"]
                if _children(client, parent, "FINISHED"):
                    break
            time.sleep(2)
        time.sleep(3)                     # let Tune write its experiment state once more
        assert driver.poll() is None, "the sweep finished before it could be interrupted"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    done_before = {r.data.tags["htl.trial_id"] for r in _children(client, parent, "FINISHED")}
    assert len(done_before) == 1
    _continue_elsewhere(sweep_file, tmp_path, tracking_uri, parent,
                        fresh_store(tmp_path / "there.db"), capsys)

    outcome = run_sweep(load_sweep(sweep_file), resume=True)
    assert outcome.parent_run_id == parent
    assert client.get_run(parent).info.status == "FINISHED"
    children = _children(client, parent, "FINISHED")
    trial_ids = [r.data.tags["htl.trial_id"] for r in children]
    assert len(children) == 2 and len(set(trial_ids)) == 2       # 2 trials, each once
    # a trial the killed driver had started but Tune had not yet recorded is re-run as a new
    # trial; its first run is closed and says so, it is never left RUNNING or counted
    for run in _children(client, parent):
        if run.info.status != "FINISHED":
            assert run.info.status == "KILLED" and run.data.tags["htl.orphaned"] == "true"
    for run in children:                                          # no epoch ran twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")]
        assert sorted(steps) == [0, 1], (run.info.run_name, steps)
        assert run.data.tags["htl.sweep"] == "tiny"
        assert run.info.run_name.startswith(run.data.tags["htl.trial_id"] + " lam=")
        # tuning never sees the test split: trials are validated only
        assert "best/val/dice" in run.data.metrics
        assert not [k for k in run.data.metrics if k.startswith(("test/", "best/test/"))]
    assert len(outcome.records) == 2 and all(r.finished for r in outcome.records)
    # finished trials were not run again: their runs ended before the resume started
    resumed_at = client.get_run(parent).data.tags["htl.resumed_at"]
    assert resumed_at and done_before <= set(trial_ids)
    # the parent run holds the study: best config, summary, and the Optuna plots
    arts = {a.path for a in client.list_artifacts(parent)}
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"best_config.yaml", "study_summary.md", "trials.csv"} <= arts
    assert "plots/parallel_coordinates.png" in plots
    best = client.get_run(parent).data
    assert best.metrics["best/val/dice"] == max(r.value("max") for r in outcome.records)
    assert set(best.params) >= {"best.train.lr", "best.htl.lam", "sweep.num_samples"}
    summary = Path(directory / "summary" / "study_summary.md").read_text()
    assert "2 (2 finished, 0 stopped early, 0 failed)" in summary


def _continue_elsewhere(sweep_file: Path, tmp_path: Path, uri: str, parent: str,
                        there: str, capsys) -> None:
    """The machine is lost after one trial ended: its archive continues the sweep on another
    machine (MLflow store, sweep directory), which trains only the missing trial — the one the
    uninterrupted search would have drawn next — and chooses the best of both."""
    import optuna

    from htl_ray.archive import ORIGIN_TAG, export_sweep, import_sweep

    archive = tmp_path / "archive"
    export_sweep(load_sweep(sweep_file), uri, archive)
    other = load_sweep(sweep_file, [f"tracking.uri={there}",
                                    f"sweep.storage_path={tmp_path / 'there'}"])
    import_sweep(other, there, archive)
    capsys.readouterr()
    outcome = run_sweep(other, resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert any("1 trial(s) ended elsewhere (archive), 1 still to run" in x for x in lines)
    client = MlflowClient(there)
    trials = _children(client, outcome.parent_run_id, "FINISHED")
    assert len(trials) == 2 and len(outcome.records) == 2
    (archived,) = [r for r in trials if ORIGIN_TAG in r.data.tags]
    (new,) = [r for r in trials if ORIGIN_TAG not in r.data.tags]
    # the seeded search's first two draws: the archived trial, then the new one
    sampler = optuna.samplers.TPESampler(seed=3)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    draws = []
    for _ in range(2):
        trial = study.ask(fixed_distributions=dict(other.space))
        draws.append(trial.params)
        study.tell(trial, 0.5)
    for run, drawn in ((archived, draws[0]), (new, draws[1])):
        assert {k: float(run.data.params[k]) for k in drawn} == pytest.approx(drawn)
    best = client.get_run(outcome.parent_run_id).data
    values = {r.info.run_id: r.data.metrics["best/val/dice"] for r in trials}
    assert best.metrics["best/val/dice"] == pytest.approx(max(values.values()))
    assert "2 (2 finished" in (tmp_path / "there" / "tiny" / "summary" /
                               "study_summary.md").read_text()
    # ... and the new trial and the parent's choice reach the archive under the original ids
    export_sweep(other, there, archive)
    files = {f.stem: json.loads(f.read_text()) for f in (archive / "tiny").glob("*.json")}
    assert len(files) == 3 and new.info.run_id in files
    assert files[parent]["params"]["best.htl.lam"] == best.params["best.htl.lam"]


def test_a_trial_that_failed_elsewhere_runs_again_with_its_values(ray_cluster, synth_dataset,
                                                                  tmp_path, tracking_uri,
                                                                  fresh_store, capsys):
    """`--resume` retries a trial that failed on its own machine; continued elsewhere from the
    archive, the failed trial runs again too — same values, first epoch — and its archived run
    stops counting, here and on any machine that imports the archive afterwards."""
    from htl_ray import tracking
    from htl_ray.archive import export_sweep, import_sweep
    from htl_ray.protocol.status import setting_status
    from htl_ray.tune.prior_trials import archived_trials

    sweep_file = _tiny_sweep_file(tmp_path, synth_dataset, tracking_uri, epochs=1, trials=1)
    # the lost machine: the sweep's parent and its one trial, which failed
    lost = load_sweep(sweep_file)
    parent = tracking.start_run(tracking_uri, "sweeps", "sweep tiny", {},
                                {"htl.role": "sweep", "htl.sweep": "tiny"})
    values = {"train.lr": 0.00371, "htl.lam": 1.234}
    failed = tracking.start_run(tracking_uri, "sweeps", "t-failed", {}, {
        "htl.role": "trial", "htl.sweep": "tiny", "mlflow.parentRunId": parent,
        "htl.trial_id": "t-failed",
        **{f"htl.sampled.{k}": json.dumps(v) for k, v in values.items()}})
    MlflowClient(tracking_uri).set_terminated(failed, "FAILED")
    lost.directory.mkdir(parents=True)
    (lost.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    archive = tmp_path / "archive"
    export_sweep(lost, tracking_uri, archive)

    there = fresh_store(tmp_path / "there.db")
    other = load_sweep(sweep_file, [f"tracking.uri={there}",
                                    f"sweep.storage_path={tmp_path / 'there'}"])
    import_sweep(other, there, archive)
    capsys.readouterr()
    outcome = run_sweep(other, resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert any("1 of them failed there and run again" in x for x in lines), lines
    client = MlflowClient(there)
    runs = _children(client, outcome.parent_run_id)
    (old,) = [r for r in runs if r.info.status == "FAILED"]
    (new,) = [r for r in runs if r.info.status == "FINISHED"]
    assert len(runs) == 2 and old.data.tags["htl.retried"] == "true"
    assert {k: float(new.data.params[k]) for k in values} == pytest.approx(values)
    assert [m.step for m in client.get_metric_history(new.info.run_id, "val/dice")] == [0]
    assert len(outcome.records) == 1 and outcome.records[0].finished
    assert "1 (1 finished, 0 stopped early, 0 failed)" in (
        tmp_path / "there" / "tiny" / "summary" / "study_summary.md").read_text()
    assert setting_status(other, there).trials_finished == 1
    # the archive learns it: a third machine counts the new trial and does not retry the old
    export_sweep(other, there, archive)
    third = fresh_store(tmp_path / "third.db")
    again = load_sweep(sweep_file, [f"tracking.uri={third}",
                                    f"sweep.storage_path={tmp_path / 'third'}"])
    import_sweep(again, third, archive)
    parent3 = json.loads((again.directory / STATE_FILE).read_text())["parent_run_id"]
    assert [r.trial_id for r in archived_trials(again, third, parent3)] == \
        [new.data.tags["htl.trial_id"]]
    assert setting_status(again, third).trials_finished == 1
