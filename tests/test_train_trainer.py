"""The training command's checks before anything starts. Real 2-worker Ray Train runs — learning,
MLflow metrics and artifacts, ranks in sync, interrupt and resume — are tested with HTL on, in
test_htl_training.py (one run covers all of it; each Ray Train run costs ~40 s of start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_bad_config_fails_before_ray_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "htl_ray.cli", "train", "train.epoch=3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'train.epoch' (did you mean 'train.epochs'?)" in proc.stderr
    assert "starting Ray" not in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "htl_ray.cli", "train",
                           f"data.path={tmp_path / 'nope'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "data.path: dataset folder not found" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()           # nothing was started


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_marks_the_run_failed_and_keeps_its_checkpoints(
        ray_cluster, synth_dataset, tmp_path, signame):
    """`ray job stop`, `kill`, a scheduler's preemption: SIGTERM is handled like Ctrl-C. And
    Ctrl-C itself (SIGINT), though Ray Train's own handler would end the process with exit
    status 1 and no word."""
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "htl_ray.cli", "train", f"data.path={synth_dataset}",
         f"tracking.uri={uri}", f"run.storage_path={tmp_path / 'runs'}", "run.name=t",
         "train.epochs=50", "scaling.num_workers=1", "data.limit_train=32",
         "model.decoder_channels=[16,8,8,4,4]"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, run_id = MlflowClient(uri), None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "mlflow.db").is_file():
            exp = client.get_experiment_by_name("htl-ray")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "val/dice"):
                run_id = runs[0].info.run_id
                break
        time.sleep(1)
    assert run_id, "the run never logged its first epoch"
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; results already written are kept" in err
    assert client.get_run(run_id).info.status == "FAILED"
    assert list((tmp_path / "runs" / "t").glob("checkpoint_*/meta.json"))


def test_a_run_starts_from_the_weights_of_model_init_checkpoint(ray_cluster, synth_dataset,
                                                                tmp_path, monkeypatch):
    """1 epoch at a negligible learning rate: the run's weights are the init checkpoint's, not
    its own seed's random init; the path is logged as a parameter, absolute. A checkpoint of
    another architecture is refused before any run starts."""
    import pytest
    import torch
    from mlflow.tracking import MlflowClient

    from htl_ray.checkpoints import load_checkpoint, save_checkpoint
    from htl_ray.config import ConfigError, ModelConfig, load_config
    from htl_ray.models import create_model
    from htl_ray.run_dir import RunDir
    from htl_ray.train.trainer import evaluate_run, run_training

    small = [16, 8, 8, 4, 4]
    torch.manual_seed(123)
    source = create_model(ModelConfig(decoder_channels=small))
    save_checkpoint(tmp_path / "pretrained", source, torch.optim.AdamW(source.parameters()),
                    None, epoch=9, metrics={})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [f"data.path={synth_dataset}", f"tracking.uri={uri}", "scaling.num_workers=1",
            f"run.storage_path={tmp_path / 'runs'}", "data.limit_train=32", "train.epochs=1",
            "train.lr=1e-9", "train.weight_decay=0"]
    with pytest.raises(ConfigError, match="pretrained/checkpoint.pt does not fit this model"):
        run_training(load_config(None, [*base, "run.name=misfit",   # default decoder widths
                                        f"model.init_checkpoint={tmp_path / 'pretrained'}"]))
    assert not (tmp_path / "runs" / "misfit").exists() and not (tmp_path / "mlflow.db").exists()

    monkeypatch.chdir(tmp_path)               # a relative path, as users write it
    cfg = load_config(None, [*base, "run.name=warm", f"model.decoder_channels={small}",
                             "model.init_checkpoint=pretrained"])
    outcome = run_training(cfg)
    trained = load_checkpoint(outcome.best_checkpoint)["model"]
    weights = [k for k, v in trained.items() if v.is_floating_point() and "bn" not in k
               and "running" not in k]
    assert weights and all(torch.allclose(trained[k], source.state_dict()[k], atol=1e-6)
                           for k in weights)
    torch.manual_seed(cfg.run.seed)
    fresh = create_model(ModelConfig(decoder_channels=small)).state_dict()
    assert not any(torch.allclose(trained[k], fresh[k], atol=1e-3) for k in weights
                   if k.endswith("conv1.weight"))
    run = MlflowClient(uri).get_run(outcome.mlflow_run_id)
    assert run.data.params["model.init_checkpoint"] == str(tmp_path / "pretrained")
    # pinned to the file it loaded, in MLflow and in the run state that --resume reads
    pinned = str(tmp_path / "pretrained" / "checkpoint.pt")
    assert run.data.tags["htl.init_checkpoint_file"] == pinned
    assert RunDir(outcome.run_dir).state().init_checkpoint_file == pinned

    # held out: the best checkpoint scored once on every test image, none of another split
    import pandas as pd

    from htl_ray.data.loading import records_path

    records = pd.read_parquet(records_path(synth_dataset), columns=["id", "split"])
    table = pd.read_parquet(outcome.best_checkpoint / "test_per_sample.parquet")
    assert sorted(table["id"]) == sorted(records.loc[records.split == "test", "id"])
    m = run.data.metrics
    assert m["best/test/dice"] == pytest.approx(table["dice"].mean())
    assert m["best/test/iou"] == pytest.approx(table["iou"].mean())
    assert outcome.test_metrics["test/dice"] == pytest.approx(m["best/test/dice"])
    assert any(k.startswith("best/test/worst_group/") for k in m)
    assert "evaluation/test_per_sample.parquet" in {
        a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "evaluation")}
    # `htl-ray evaluate` scores on the driver what the workers validated: the same numbers
    val = evaluate_run(outcome.run_dir, "val")
    assert val["val/dice"] == pytest.approx(outcome.best_metrics["val/dice"], abs=1e-6)
    assert val["val/thresholded_jaccard"] == pytest.approx(
        outcome.best_metrics["val/thresholded_jaccard"], abs=1e-6)


SMALL = ["scaling.num_workers=1", "data.limit_train=32", "model.decoder_channels=[16,8,8,4,4]",
         "train.evaluate_test=false"]


def test_resume_paths_come_from_the_run_directory_not_the_working_directory(synth_dataset,
                                                                           tmp_path,
                                                                           monkeypatch):
    """No Ray: a run started with relative paths in one directory resolves, from any other,
    to its own location, its dataset and its MLflow store; so does a run of an older version,
    whose state kept the relative paths as given."""
    import json
    import os

    import pytest

    from htl_ray.config import ConfigError, load_config
    from htl_ray.run_dir import STATE_FILE as RUN_STATE_FILE
    from htl_ray.train.trainer import _state_config, config_for_resume

    start, other = tmp_path / "start", tmp_path / "other"
    start.mkdir(), other.mkdir()
    monkeypatch.chdir(start)
    data = os.path.relpath(synth_dataset, start)
    cfg = load_config(None, [f"data.path={data}", "run.storage_path=runs/a", "run.name=r",
                             "tracking.uri=sqlite:///mlflow.db"])
    run_dir = start / "runs" / "a" / "r"
    run_dir.mkdir(parents=True)
    uri = f"sqlite:///{start / 'mlflow.db'}"
    for config, kept_uri in ((_state_config(cfg, run_dir, uri), uri),       # this version
                             (cfg.to_dict(), "sqlite:///mlflow.db")):      # an older one
        (run_dir / RUN_STATE_FILE).write_text(json.dumps(
            {"mlflow_run_id": "x", "tracking_uri": kept_uri, "config": config}))
        monkeypatch.chdir(other)
        resumed = config_for_resume(run_dir)
        assert (resumed.run.storage_path, resumed.run.name) == (str(run_dir.parent), "r")
        assert resumed.data.path == str(synth_dataset)
        assert resumed.tracking.uri == uri
        moved = tmp_path / "moved" / "r2"
        moved.parent.mkdir(exist_ok=True)
        os.rename(run_dir, moved)
        there = config_for_resume(moved)
        assert (there.run.storage_path, there.run.name) == (str(moved.parent), "r2")
        if config["data"]["path"] == str(synth_dataset):   # absolute: found after the move
            assert there.data.path == str(synth_dataset)
        os.rename(moved, run_dir)
        monkeypatch.chdir(start)
    with pytest.raises(ConfigError, match="run.storage_path: a resumed run stays"):
        config_for_resume(run_dir, ["run.storage_path=elsewhere"])
    # an older run stored under '../runs': its working directory cannot be told, so its
    # relative dataset path is asked for, not guessed
    older = cfg.to_dict()
    older["run"]["storage_path"] = "../runs"
    (run_dir / RUN_STATE_FILE).write_text(json.dumps(
        {"mlflow_run_id": "x", "tracking_uri": uri, "config": older}))
    with pytest.raises(ConfigError, match=r"recorded data.path .* give it again, absolute"):
        config_for_resume(run_dir)
    assert config_for_resume(run_dir, [f"data.path={synth_dataset}"]).data.path == \
        str(synth_dataset)


def test_resume_of_a_copied_run_from_another_directory_continues_the_copy(
        ray_cluster, synth_dataset, tmp_path, monkeypatch, capsys):
    """Started with relative paths in one directory, crashed after epoch 0, copied; `htl-ray
    train --resume COPY` from a third directory trains epoch 1 into the copy, not into the
    original and not into a new run there, says what it resumes and that it is a copy, and
    logs to the run's own MLflow store and run."""
    import os
    import shutil

    import pytest
    from mlflow.tracking import MlflowClient

    from htl_ray.cli import main
    from htl_ray.config import load_config
    from htl_ray.run_dir import RunDir
    from htl_ray.train.loop import InjectedFault
    from htl_ray.train.trainer import run_training

    start, other = tmp_path / "start", tmp_path / "other"
    start.mkdir(), other.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(start)
    cfg = load_config(None, [f"data.path={os.path.relpath(synth_dataset, start)}",
                             "run.storage_path=runs", "run.name=r", "train.epochs=2",
                             "tracking.uri=sqlite:///mlflow.db", *SMALL])
    with pytest.raises(Exception) as crash:
        run_training(cfg, fault_after_epoch=0)
    assert "InjectedFault" in repr(crash.value) or isinstance(crash.value, InjectedFault)
    original = start / "runs" / "r"
    copy = tmp_path / "copies" / "r-copy"
    shutil.copytree(original, copy)
    capsys.readouterr()

    monkeypatch.chdir(other)
    assert main(["train", "--resume", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"resuming run {copy}: from the checkpoint of epoch 0 (epoch 2 of 2 next)" in out
    assert f"this run was started in {original} and is now in {copy}" in out
    assert "this is a copy" in out
    assert [int(m["epoch"]) for m, _ in RunDir(copy).checkpoints()] == [1, 0]
    assert [int(m["epoch"]) for m, _ in RunDir(original).checkpoints()] == [0]
    assert list(other.iterdir()) == []                 # no new run, store or data here
    client = MlflowClient(f"sqlite:///{start / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("htl-ray").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")] == [0, 1]


def test_a_run_whose_loss_diverges_ends_failed_and_is_left_out_of_compare(
        ray_cluster, synth_dataset, tmp_path, monkeypatch, capsys):
    """A finite but absurd learning rate: the loss stops being a number in epoch 1. The run
    stops there with one error naming the epoch and the value (exit 2), FAILED in MLflow, and
    `compare` does not count it."""
    from mlflow.tracking import MlflowClient

    from htl_ray.cli import main
    from htl_ray.compare import load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["train", f"data.path={synth_dataset}", f"tracking.uri={uri}",
                 f"run.storage_path={tmp_path / 'runs'}", "run.name=diverged",
                 "train.optimizer=sgd", "train.lr=1e30", "train.epochs=3", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "train/loss is nan at epoch 1: training diverged (train.lr=1e+30" in line
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("htl-ray").experiment_id])
    assert run.info.status == "FAILED"
    assert client.get_metric_history(run.info.run_id, "val/dice") == []
    assert load_runs(uri, "htl-ray").empty            # compare counts FINISHED runs only
