"""The protocol archive against real MLflow SQLite stores: what is written, that importing it
elsewhere gives the results page the same runs (statuses, metric histories, compute time, best
configuration), that importing twice adds nothing, and that bad or conflicting archives are
refused with the file named."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

import htl_ray.tune.state as sweep_state
from htl_ray import tracking
from htl_ray.archive import ORIGIN_TAG, export_sweep, import_sweep
from htl_ray.config import ConfigError
from htl_ray.protocol.status import setting_status
from htl_ray.tune.child_runs import PlannedRun, finished_elsewhere
from htl_ray.tune.space import load_sweep
from htl_ray.tune.state import STATE_FILE


def _sweep(tmp_path, synth_dataset, uri, where):
    path = tmp_path / f"{where}.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": [f"data.path={synth_dataset}", f"tracking.uri={uri}",
                      "tracking.experiment=arch", "htl.method=htl"],
        "sweep": {"name": "arch-sweep", "num_samples": 2, "storage_path": str(tmp_path / where),
                  "comparators": ["erm"]},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}}}))
    return load_sweep(path)


def _run(uri, name, tags, params, history, status, minutes):
    client = MlflowClient(uri)
    run_id = tracking.start_run(uri, "arch", name, params,
                                {"htl.sweep": "arch-sweep", **tags})
    start = client.get_run(run_id).info.start_time
    for step, metrics in enumerate(history):
        tracking.log_metrics(uri, run_id, metrics, step)
    client.set_terminated(run_id, status, end_time=start + int(minutes * 60_000))
    return run_id


@pytest.fixture
def swept(tmp_path, synth_dataset, tracking_uri):
    """A finished sweep as the protocol leaves it: parent with the best config, a trial run to
    the end, one stopped early, ERM and HTL confirmation runs scored on test, one unfinished."""
    sweep = _sweep(tmp_path, synth_dataset, tracking_uri, "here")
    uri = tracking_uri
    parent = _run(uri, "sweep arch-sweep", {"htl.role": "sweep", "htl.best_trial": "t1 lam=1.5",
                                            "htl.best_trial_id": "t1"},
                  {"best.htl.lam": "1.5", "sweep.num_samples": "2"},
                  [{"sweep/trials": 2}], "FINISHED", 1)
    child = {"mlflow.parentRunId": parent}
    cfg = sweep.config_for({"htl.lam": 1.5}, ["run.seed=0"])
    flat = cfg.flat()
    _run(uri, "t1", {**child, "htl.role": "trial"}, {**flat, "htl.lam": 1.5},
         [{"val/dice": 0.5}, {"val/dice": 0.6}], "FINISHED", 30)
    _run(uri, "t2", {**child, "htl.role": "trial", "htl.stopped_early": "true"},
         {**flat, "htl.lam": 0.7}, [{"val/dice": 0.3}], "KILLED", 12)
    fingerprint = json.loads((synth_dataset / "manifest.json").read_text())["fingerprint"]
    confirm = {**child, "htl.role": "confirm", "htl.dataset_fingerprint": fingerprint}
    for group, method, dice in (("best", "htl", 0.81), ("erm", "erm", 0.79)):
        _run(uri, f"{group} s0", {**confirm, "htl.group": group},
             {**flat, "htl.method": method},
             [{"val/dice": dice - 0.05}, {"val/dice": dice, "best/test/dice": dice}],
             "FINISHED", 45)
    _run(uri, "best s1", {**confirm, "htl.group": "best"}, {**flat, "run.seed": 1},
         [{"val/dice": 0.7}], "RUNNING", 5)
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    (sweep.directory / "report").mkdir()
    (sweep.directory / "report" / "enrichment.csv").write_text("attribute,group\nsite,x\n")
    return sweep, parent


def test_export_writes_the_results_of_a_finished_sweep_once(swept, tmp_path, tracking_uri):
    sweep, parent = swept
    archive = tmp_path / "archive"
    count = export_sweep(sweep, tracking_uri, archive)
    files = sorted((archive / "arch-sweep").glob("*.json"))
    assert count.runs == 5 and len(files) == 5               # not the run still training
    records = {json.loads(f.read_text())["run_name"]: json.loads(f.read_text()) for f in files}
    assert set(records) == {"sweep arch-sweep", "t1", "t2", "best s0", "erm s0"}
    assert records["t2"]["status"] == "KILLED" and records["t2"]["tags"]["htl.stopped_early"]
    assert [p[:2] for p in records["best s0"]["metrics"]["val/dice"]] == \
        [[0, pytest.approx(0.76)], [1, 0.81]]
    assert records["best s0"]["end_time"] - records["best s0"]["start_time"] == 45 * 60_000
    assert records["erm s0"]["tags"]["mlflow.parentRunId"] == parent
    assert (archive / "arch-sweep" / "enrichment.csv").read_text().startswith("attribute")
    # terminated runs are not rewritten: the committed files stay as they are
    stamps = [f.stat().st_mtime_ns for f in files]
    assert export_sweep(sweep, tracking_uri, archive).unchanged == 5
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_an_unfinished_sweep_archives_the_trials_that_ended(tmp_path, synth_dataset,
                                                          tracking_uri, fresh_store):
    """While its trials train: the parent and every trial that ended (so the sweep continues
    elsewhere if this machine is lost), not a trial cut short (trained again there); once the
    sweep has chosen its best configuration the parent is written again, with it."""
    sweep = _sweep(tmp_path, synth_dataset, tracking_uri, "here")
    uri = tracking_uri
    parent = tracking.start_run(uri, "arch", "sweep arch-sweep", {},      # running: no end
                                {"htl.sweep": "arch-sweep", "htl.role": "sweep"})
    child = {"mlflow.parentRunId": parent, "htl.role": "trial"}
    done = _run(uri, "t1", child, {"htl.lam": 1.5}, [{"val/dice": 0.5}], "FINISHED", 30)
    stopped = _run(uri, "t2", {**child, "htl.stopped_early": "true"}, {"htl.lam": 0.7},
                   [{"val/dice": 0.3}], "KILLED", 12)
    failed = _run(uri, "t3", child, {"htl.lam": 1.9}, [], "FAILED", 1)
    cut = _run(uri, "t4", {**child, "htl.interrupted": "true"}, {"htl.lam": 1.1},
               [{"val/dice": 0.4}], "KILLED", 8)
    _run(uri, "t5", child, {"htl.lam": 0.9}, [{"val/dice": 0.4}], "RUNNING", 8)
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    archive = tmp_path / "a"
    assert export_sweep(sweep, uri, archive).runs == 4
    assert {f.stem for f in (archive / "arch-sweep").glob("*.json")} == \
        {parent, done, stopped, failed}
    assert export_sweep(sweep, uri, archive).runs == 0
    # imported elsewhere and exported from there: the same files (the parent has no end yet)
    other_uri = fresh_store(tmp_path / 'other.db')
    other = _sweep(tmp_path, synth_dataset, other_uri, "there")
    assert import_sweep(other, other_uri, archive).runs == 4
    before = {f.name: f.read_text() for f in (archive / "arch-sweep").glob("*.json")}
    assert export_sweep(other, other_uri, archive).runs == 0
    assert {f.name: f.read_text() for f in (archive / "arch-sweep").glob("*.json")} == before
    # the sweep ends (t5 finished on resume): the parent gains its best configuration
    MlflowClient(uri).log_param(parent, "best.htl.lam", "1.5")
    assert export_sweep(sweep, uri, archive).runs == 2   # parent, t4
    record = json.loads((archive / "arch-sweep" / f"{parent}.json").read_text())
    assert record["params"]["best.htl.lam"] == "1.5" and record["status"] == "KILLED"
    assert (archive / "arch-sweep" / f"{cut}.json").is_file()


def test_periodic_export_archives_while_training_and_survives_a_failure(
        swept, tmp_path, tracking_uri, capsys):
    import time

    from htl_ray.archive import PeriodicExport

    sweep, _ = swept
    archive = tmp_path / "periodic"
    with PeriodicExport([sweep], tracking_uri, archive, interval_s=0.2) as exporter:
        deadline = time.time() + 30
        while exporter.exports == 0 and time.time() < deadline:
            time.sleep(0.05)
    assert exporter.exports >= 1 and len(list((archive / "arch-sweep").glob("*.json"))) == 5
    # an export that fails is logged once, not every interval, and stops nothing
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the archive directory should be")
    failing = PeriodicExport([sweep], tracking_uri, blocked, interval_s=0.1)
    capsys.readouterr()
    failing.export_once()
    failing.export_once()
    assert failing.exports == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("archive: export failed" in line for line in lines) == 1


@pytest.fixture
def elsewhere(swept, tmp_path, synth_dataset, tracking_uri, fresh_store):
    """The swept sweep's archive, and the same sweep file pointed at another MLflow store and
    sweep directory: the next sitting's machine."""
    archive = tmp_path / "archive"
    export_sweep(swept[0], tracking_uri, archive)
    other_uri = fresh_store(tmp_path / 'other.db')
    return archive, _sweep(tmp_path, synth_dataset, other_uri, "there"), other_uri


def test_import_elsewhere_gives_the_same_protocol_status(swept, elsewhere, tmp_path,
                                                         tracking_uri, capsys):
    (sweep, parent), (archive, other, other_uri) = swept, elsewhere
    capsys.readouterr()
    assert import_sweep(other, other_uri, archive).runs == 5
    assert "5 run(s) of arch-sweep imported" in capsys.readouterr().out.splitlines()[0]
    state = json.loads((other.directory / STATE_FILE).read_text())
    assert state["from_archive"] == str(archive) and state["parent_run_id"] != parent
    assert sweep_state.read(other.directory / STATE_FILE).from_archive == str(archive)
    here, there = setting_status(sweep, tracking_uri), setting_status(other, other_uri)
    assert there.parent_run_id == state["parent_run_id"]
    assert there.trials_finished == here.trials_finished == 2   # the early-stopped one counts
    assert there.confirm_finished == here.confirm_finished == {"best": 1, "erm": 1}
    assert there.best_params == here.best_params == {"htl.lam": "1.5"}
    assert there.compute_hours == pytest.approx(here.compute_hours)
    assert there.compute_hours == pytest.approx((30 + 12 + 45 + 45) / 60)
    client = MlflowClient(other_uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("arch").experiment_id])}
    best = runs["best s0"]
    assert best.data.tags["mlflow.parentRunId"] == state["parent_run_id"]   # ids remapped
    assert best.data.tags[ORIGIN_TAG] != best.info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(best.info.run_id, "val/dice")]\
        == [(0, pytest.approx(0.76)), (1, 0.81)]
    assert (other.directory / "report" / "enrichment.csv").is_file()
    # twice adds nothing; exported from there, the archive is the same files, same content
    assert import_sweep(other, other_uri, archive).runs == 0
    again = tmp_path / "again"
    export_sweep(other, other_uri, again)
    for f in sorted((archive / "arch-sweep").glob("*")):
        assert (again / "arch-sweep" / f.name).read_text() == f.read_text()


def test_an_imported_confirmation_run_is_finished_unless_its_config_differs(elsewhere):
    archive, other, other_uri = elsewhere
    import_sweep(other, other_uri, archive)
    parent = json.loads((other.directory / STATE_FILE).read_text())["parent_run_id"]

    def finished(group, seed, cfg):
        return finished_elsewhere(other, PlannedRun(f"confirm-{group}-s{seed}", group, seed, cfg),
                                  parent_run_id=parent)

    runs_dir = str(other.directory / "runs")
    plan = other.config_for({"htl.lam": 1.5}, ["run.seed=0", f"run.storage_path={runs_dir}"])
    found = finished("best", 0, plan)
    erm = other.config_for({"htl.lam": 1.5}, ["run.seed=0", "htl.method=erm"])
    assert found is not None and found != finished("erm", 0, erm)
    assert finished("best", 1, plan) is None
    # another sweep's run of the same name (an earlier attempt in the same store) is not it
    assert finished_elsewhere(other, PlannedRun("x", "best", 0, plan),
                              parent_run_id="another-parent") is None
    changed = other.config_for({"htl.lam": 2.0}, ["run.seed=0"])
    with pytest.raises(ConfigError, match=r"confirm-best-s0.*htl.lam"):
        finished("best", 0, changed)
    client = MlflowClient(other_uri)
    client.set_tag(found, "htl.dataset_fingerprint", "another-dataset")
    with pytest.raises(ConfigError, match=r"the dataset \(htl.dataset_fingerprint\)"):
        finished("best", 0, plan)


def test_bad_and_conflicting_archives_are_refused_by_name(elsewhere):
    archive, other, other_uri = elsewhere
    other.directory.mkdir(parents=True)
    (other.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": "local-sweep"}))
    with pytest.raises(ConfigError, match="holds another sweep .*local-sweep"):
        import_sweep(other, other_uri, archive)
    broken = archive / "arch-sweep" / "broken.json"
    broken.write_text('{"run_id": "x"')
    with pytest.raises(ConfigError, match="broken.json: not a readable archived run"):
        import_sweep(other, other_uri, archive)
    broken.write_text("[]")
    with pytest.raises(ConfigError, match="broken.json: expected an archived run"):
        import_sweep(other, other_uri, archive)
    broken.write_text(json.dumps({"run_id": "x", "format": 1}))
    with pytest.raises(ConfigError, match=r"broken.json: .*missing \['metrics'"):
        import_sweep(other, other_uri, archive)


def test_mid_sitting_the_running_parent_is_archived_and_unscored_runs_wait(
        tmp_path, synth_dataset, tracking_uri, fresh_store):
    """While confirmation runs train, the parent is RUNNING (the machine may be lost before it
    ends) and a run that finished but has no test score yet is not a result."""
    sweep = _sweep(tmp_path, synth_dataset, tracking_uri, "here")
    uri = tracking_uri
    parent = _run(uri, "sweep arch-sweep", {"htl.role": "sweep"}, {"best.htl.lam": "1.5"},
                  [], "RUNNING", 1)
    for trial in ("t1", "t2"):
        _run(uri, trial, {"mlflow.parentRunId": parent, "htl.role": "trial"}, {},
             [{"val/dice": 0.5}], "FINISHED", 30)
    unscored = _run(uri, "best s0", {"htl.role": "confirm", "htl.group": "best",
                                     "mlflow.parentRunId": parent}, {"run.seed": 0},
                    [{"val/dice": 0.7}], "FINISHED", 40)
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    archive = tmp_path / "archive"
    assert export_sweep(sweep, uri, archive).runs == 3
    record = json.loads((archive / "arch-sweep" / f"{parent}.json").read_text())
    assert record["status"] == "KILLED"                 # elsewhere: an interrupted sweep
    # scored later (`htl-ray evaluate`): same status and end time, but now a result
    tracking.log_metrics(uri, unscored, {"best/test/dice": 0.8}, step=1)
    assert export_sweep(sweep, uri, archive).runs == 1
    assert (archive / "arch-sweep" / f"{unscored}.json").is_file()
    # the parent ends: written again, with its final status
    MlflowClient(uri).set_terminated(parent, "FINISHED")
    assert export_sweep(sweep, uri, archive).runs == 1
    assert json.loads((archive / "arch-sweep" / f"{parent}.json").read_text())["status"] \
        == "FINISHED"
    # an archive that lost its parent's file cannot be continued, and says so
    (archive / "arch-sweep" / f"{parent}.json").unlink()
    other_uri = fresh_store(tmp_path / 'other.db')
    other = _sweep(tmp_path, synth_dataset, other_uri, "there")
    with pytest.raises(ConfigError, match="arch-sweep: 3 archived runs but not their sweep's"):
        import_sweep(other, other_uri, archive)
