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


def test_credentials_in_uris_never_reach_params_tags_or_messages(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = tracking.start_run(uri, "exp", "r", {"tracking.uri": "https://ann:s3cr3t@h:5000"},
                                {"note": "http://bob:pw@h/"})
    tracking.set_tags(uri, run_id, {"later": "https://x:pw2@h/"})
    data = MlflowClient(uri).get_run(run_id).data
    stored = " ".join([*data.params.values(), *data.tags.values()])
    assert "s3cr3t" not in stored and "pw@" not in stored and "pw2" not in stored
    assert data.params["tracking.uri"] == "https://ann:***@h:5000"


def test_unreachable_tracking_server_fails_in_seconds_before_anything_starts(
        synth_dataset, tmp_path, monkeypatch):
    import time

    import pytest
    from ports import unused_port

    from htl_ray.config import ConfigError, load_config
    from htl_ray.train.trainer import run_dir_of, run_training

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = unused_port()                             # a port nobody listens on
    uri = f"http://ann:s3cr3t@127.0.0.1:{port}"
    cfg = load_config(None, [f"data.path={synth_dataset}", f"tracking.uri={uri}",
                             f"run.storage_path={tmp_path / 'runs'}"])
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"tracking.uri: MLflow server http://ann:\*\*\*@127"
                                          r".*is not reachable.*sqlite:///mlflow.db"):
        run_training(cfg)
    assert time.time() - t0 < 10 and not run_dir_of(cfg).exists()
    with pytest.raises(ConfigError, match="folder of the SQLite store"):
        tracking.check_reachable(f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}")


def test_git_commit_says_when_the_code_differs_from_the_commit(tmp_path):
    import subprocess

    from htl_ray.tracking import git_commit

    assert git_commit(tmp_path) == "unknown"                      # not a checkout
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(pkg) == head
    (pkg / "mod.py").write_text("x = 2\n")
    assert git_commit(pkg) == head + "+dirty"
    (tmp_path / "elsewhere.txt").write_text("outside the package\n")
    (pkg / "mod.py").write_text("x = 1\n")
    assert git_commit(pkg) == head                  # only the package's own files count
