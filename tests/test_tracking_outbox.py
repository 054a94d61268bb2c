"""MLflow writes during a tracking outage, against a real `mlflow server` that is killed and
started again: kept on disk, never lost, sent once when it answers, and a training run goes on
and finishes while the server is down."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from htl_ray import tracking
from htl_ray.tracking.outbox import TrackingOutbox, flush_run


def _steps(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_writes_during_an_outage_are_kept_and_sent_once_when_the_server_answers(
        mlflow_server, tmp_path, capsys):
    uri = mlflow_server.uri
    run_id = tracking.start_run(uri, "outbox", "r", {"a": 1}, {})
    box = TrackingOutbox(tmp_path / "run", uri, run_id, "rank0")
    assert box.metrics({"loss": 1.0}, step=0)
    assert not box.path.exists()                         # sent: nothing kept

    mlflow_server.stop()
    table = tmp_path / "v0001.parquet"
    table.write_bytes(b"PAR1 table")
    t0 = time.time()
    assert not box.metrics({"loss": 0.5}, step=1)
    assert not box.artifact(table, "htl")
    assert not box.metrics({"loss": 0.25, "nan": float("nan")}, step=2)
    # bounded: MLflow's own client would retry each call with back-off for about 4 minutes
    assert time.time() - t0 < 60
    assert [e["kind"] for e in box.pending()] == ["metrics", "artifact", "metrics"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and str(box.path) in lines[0] and "training goes on" in lines[0]
    # nothing reached the store meanwhile
    assert _steps(MlflowClient(mlflow_server.store), run_id, "loss") == {0: 1.0}

    mlflow_server.start()
    assert box.metrics({"loss": 0.125}, step=3)
    client = MlflowClient(uri)
    assert _steps(client, run_id, "loss") == {0: 1.0, 1: 0.5, 2: 0.25, 3: 0.125}
    assert "nan" not in client.get_run(run_id).data.metrics          # NaNs are not sent
    assert [a.path for a in client.list_artifacts(run_id, "htl")] == ["htl/v0001.parquet"]
    lines = capsys.readouterr().out.splitlines()
    assert not box.path.exists() and "answers again: sent the 4 write(s)" in lines[-1]

    # the same write again with its first timestamp is stored once (a resumed rank 0 does this)
    ts = client.get_metric_history(run_id, "loss")[1].timestamp
    assert box.metrics({"loss": 0.5}, step=1, ts=ts)
    assert len(client.get_metric_history(run_id, "loss")) == 4

    # the driver's end goes last, and a run's outboxes are flushed in one call
    driver = TrackingOutbox(tmp_path / "run", uri, run_id, "driver")
    mlflow_server.stop()
    assert not driver.end("FINISHED")
    mlflow_server.start()
    assert flush_run(tmp_path / "run", uri, run_id) == {}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_run_goes_on_through_an_outage_and_sync_sends_what_it_kept(
        ray_cluster, synth_dataset, mlflow_server, tmp_path, capsys):
    from htl_ray.cli import main
    from htl_ray.config import load_config
    from htl_ray.train.trainer import run_training

    uri = mlflow_server.uri
    cfg = load_config(None, [
        f"data.path={synth_dataset}", f"tracking.uri={uri}",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=outage", "train.epochs=3",
        "scaling.num_workers=1", "data.limit_train=48", "data.batch_size=8",
        "model.decoder_channels=[16,8,8,4,4]", "htl.method=htl", "htl.refresh_every=1",
        "htl.warmup_epochs=0", "htl.sparsities=[0.5]", "htl.asynchronous=false"])
    store = MlflowClient(mlflow_server.store)
    killed = {}

    def kill_after_first_epoch():
        deadline = time.time() + 300
        while time.time() < deadline:
            exp = store.get_experiment_by_name("htl-ray")
            runs = store.search_runs([exp.experiment_id]) if exp else []
            if runs and store.get_metric_history(runs[0].info.run_id, "val/dice"):
                mlflow_server.stop()
                killed["run_id"] = runs[0].info.run_id
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    killer.start()
    capsys.readouterr()
    outcome = run_training(cfg)
    lines = capsys.readouterr().out.splitlines()
    killer.join(timeout=5)
    run_id = killed["run_id"]
    assert outcome.mlflow_run_id == run_id

    # training went on: every epoch checkpointed, the HTL tables scored, nothing lost on disk
    metas = sorted(outcome.run_dir.glob("checkpoint_*/meta.json"))
    assert outcome.metrics["epoch"] == 2 and outcome.best_checkpoint is not None
    assert (outcome.run_dir / "htl" / "v0001.parquet").is_file()
    assert len(metas) >= 2
    # the store saw only epoch 0; the rest waits in the outbox, and the user is told how to send it
    assert sorted(_steps(store, run_id, "val/dice")) == [0]
    assert store.get_run(run_id).info.status == "RUNNING"
    assert outcome.tracking_pending > 0
    assert any(f"htl-ray sync {outcome.run_dir}" in line for line in lines)

    mlflow_server.start()
    assert main(["sync", str(outcome.run_dir)]) == 0
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(_steps(client, run_id, "val/dice")) == [0, 1, 2]       # each epoch once
    assert len(client.get_metric_history(run_id, "val/dice")) == 3
    assert sorted(_steps(client, run_id, "htl/set_size")) == [1, 2]      # the coordinator's
    best_epoch = int(run.data.tags["htl.best_epoch"])
    assert run.data.metrics["best/val/dice"] == pytest.approx(
        _steps(client, run_id, "val/dice")[best_epoch])
    assert {"config.yaml", "best_checkpoint", "evaluation", "htl"} <= {
        a.path for a in client.list_artifacts(run_id)}
    assert not list((outcome.run_dir / "mlflow_outbox").glob("*.jsonl"))
    assert main(["sync", str(outcome.run_dir)]) == 0                      # nothing left: a no-op
