from pathlib import Path

from mlflow.tracking import MlflowClient

from htl_ray import tracking


def test_uri_rule_env_wins_and_relative_sqlite_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert tracking.resolve_tracking_uri("http://x") == f"sqlite:///{tmp_path / 'other.db'}"


def test_run_lifecycle_in_a_real_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = tracking.start_run(uri, "exp", "r1", {f"p{i}": i for i in range(150)},
                                {"htl.git_commit": "abc"})
    tracking.log_metrics(uri, run_id, {"val/dice": 0.5, "skip": float("nan")}, step=0)
    tracking.log_metrics(uri, run_id, {"val/dice": 0.7}, step=1)
    (tmp_path / "a.txt").write_text("x")
    tracking.log_artifact(uri, run_id, tmp_path / "a.txt", "files")
    tracking.end_run(uri, run_id, "FAILED")
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and len(run.data.params) == 150
    assert [m.value for m in MlflowClient(uri).get_metric_history(run_id, "val/dice")] == [0.5,
                                                                                          0.7]
    assert "skip" not in run.data.metrics
    # artifacts of a SQLite store live beside the database, whatever the working directory
    assert Path(run.info.artifact_uri.replace("file://", "")).is_relative_to(tmp_path)
