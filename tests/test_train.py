"""Real Ray Train runs (2 CPU workers, gloo) on a small synthetic set, tracked in a real SQLite
MLflow store: learning happens, MLflow holds metrics and artifacts, and ranks stay in sync.
(Interrupting and resuming a run is tested with HTL on, in test_htl_training.py.)"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from htl_ray.config import load_config
from htl_ray.data.schema import read_manifest
from htl_ray.models import create_model
from htl_ray.train.trainer import run_training

SMALL = ["data.batch_size=8", "model.decoder_channels=[64,32,16,8,4]", "train.lr=0.003",
         "scaling.num_workers=2", "scaling.resources_per_worker={CPU: 1}"]


def _cfg(dataset, tmp_path, uri, name, *extra):
    return load_config(None, [f"data.path={dataset}", f"run.storage_path={tmp_path / 'runs'}",
                              f"run.name={name}", f"tracking.uri={uri}", *SMALL, *extra])


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_worker_run_learns_and_is_tracked(ray_cluster, synth_dataset, tmp_path,
                                              tracking_uri):
    cfg = _cfg(synth_dataset, tmp_path, tracking_uri, "learn", "train.epochs=4")
    outcome = run_training(cfg, log=lambda s: None)

    client = MlflowClient(tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    dice = _history(client, run.info.run_id, "val/dice")
    assert [s for s, _ in dice] == [0, 1, 2, 3]
    assert max(v for s, v in dice if s > 0) > dice[0][1]          # validation Dice rises
    # both ranks held identical weights after every epoch
    assert [v for _, v in _history(client, run.info.run_id, "weights_checksum_max_abs_diff")] \
        == [0.0] * 4
    assert run.data.params["train.epochs"] == "4"
    assert run.data.tags["htl.dataset_fingerprint"] == read_manifest(synth_dataset)["fingerprint"]
    assert run.data.tags["htl.version.ray"] == "2.60.0"
    assert "val/worst_group/site/dice" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "best_checkpoint", "evaluation"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "evaluation/val_per_sample.parquet",
                                      str(tmp_path))
    table = pd.read_parquet(local)
    n_val = read_manifest(synth_dataset)["split_counts"]["val"]
    assert len(table) == n_val and table.id.is_unique                 # no val image lost
    assert table.dice.between(0, 1).all()
    best_epoch = int(run.data.tags["htl.best_epoch"])
    assert table.dice.mean() == pytest.approx(dict(dice)[best_epoch])

    ckpt = client.download_artifacts(run.info.run_id, "best_checkpoint/checkpoint.pt",
                                     str(tmp_path))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = create_model(cfg.model)
    model.load_state_dict(state["model"])                              # a loadable model
    assert state["epoch"] == best_epoch


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
