"""HTL attention inside real 2-worker Ray Train runs: every rank adopts the same weights, epochs
advance while a refresh runs, and an interrupted run resumes from its saved epoch, into the same
MLflow run, with the HTL version it was using, and ends learned and fully tracked."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from htl_ray.config import ConfigError, load_config
from htl_ray.data.schema import read_manifest
from htl_ray.htl.coordinator import load_versions, version_path, weights_checksum
from htl_ray.models import create_model
from htl_ray.run_dir import read_meta
from htl_ray.train.trainer import config_for_resume, run_dir_of, run_training

HTL = ["data.batch_size=8", "model.decoder_channels=[32,16,8,8,4]", "train.lr=0.003",
       "scaling.num_workers=2", "scaling.resources_per_worker={CPU: 0.5}",
       "htl.method=htl", "htl.refresh_every=1", "htl.warmup_epochs=0", "htl.lam=2.0",
       "htl.scorer_batch_size=64", "htl.sparsities=[0.3,0.6]"]


def _cfg(dataset, tmp_path, uri, name, *extra):
    return load_config(None, [f"data.path={dataset}", f"run.storage_path={tmp_path / 'runs'}",
                              f"run.name={name}", f"tracking.uri={uri}", *HTL, *extra])


def _hist(client, run_id, key):
    return {m.step: m for m in client.get_metric_history(run_id, key)}


def _values(client, run_id, key):
    return {s: m.value for s, m in _hist(client, run_id, key).items()}


def test_sync_refresh_same_weights_on_every_rank_and_resume_keeps_version(
        ray_cluster, synth_dataset, tmp_path, tracking_uri):
    cfg = _cfg(synth_dataset, tmp_path, tracking_uri, "sync", "train.epochs=3",
               "htl.asynchronous=false")
    with pytest.raises(Exception, match="injected fault after epoch 1"):
        run_training(cfg, fault_after_epoch=1)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("htl-ray").experiment_id])
    rid = run.info.run_id
    run_dir = run_dir_of(cfg)
    # the crash is marked, and nothing already computed is lost
    assert run.info.status == "FAILED"
    assert sorted(_values(client, rid, "val/dice")) == [0, 1]
    saved = sorted(read_meta(p.parent)["epoch"] for p in run_dir.glob("checkpoint_*/meta.json"))
    assert saved == [0, 1]
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(cfg)              # no silent overwrite
    # synchronous: epoch 1 waited for version 1 (submitted after epoch 0) and attended it
    assert _values(client, rid, "htl/version_in_use") == {0: 0.0, 1: 1.0}
    assert _values(client, rid, "htl/attended_samples")[1] > 0
    assert _values(client, rid, "htl/weights_checksum_max_abs_diff") == {0: 0.0, 1: 0.0}
    # the refresh submitted before the crash was finished and persisted, not lost
    assert sorted(load_versions(run_dir)) == [1, 2]
    v1 = pd.read_parquet(version_path(run_dir, 1))
    assert v1.id.is_unique and len(v1) == 140 and v1.weight.mean() == pytest.approx(1.0)
    assert v1.selected.sum() == 28                                  # q = 0.2 of 140
    assert _values(client, rid, "htl/weights_checksum")[1] == pytest.approx(
        weights_checksum(v1.id.to_numpy(), v1.weight.to_numpy()))
    assert {"htl/v0001.parquet", "htl/v0002.parquet"} <= {
        a.path for a in client.list_artifacts(rid, "htl")}
    assert set(_values(client, rid, "htl/set_size")) == {1, 2}
    assert abs(_values(client, rid, "htl/measured_sparsity/0.60")[1] - 0.6) <= 0.005
    assert 0 <= _values(client, rid, "htl/jaccard_prev")[2] <= 1

    # the refresh after epoch 1 lost, as when a driver dies while its coordinator scores
    version_path(run_dir, 2).unlink()
    resumed = run_training(config_for_resume(run_dir), resume=True)
    assert resumed.mlflow_run_id == rid and resumed.metrics["epoch"] == 2
    # epochs 0 and 1 were not trained again: one value per step, and epoch 2 was added
    for key in ("val/dice", "train/loss"):
        assert [m.step for m in client.get_metric_history(rid, key)] == [0, 1, 2]
    versions = _values(client, rid, "htl/version_in_use")
    checksums = _values(client, rid, "htl/weights_checksum")
    # synchronous: epoch 2 trains with a refresh of epoch 1's snapshot, as it would have without
    # the crash — not with the checkpoint's v1 — and the lost v2 was scored again from the
    # restored model (the same weights as that snapshot)
    assert versions[2] == 2.0 and sorted(load_versions(run_dir)) == [1, 2]
    v2 = pd.read_parquet(version_path(run_dir, 2))
    assert v2.epoch.unique().tolist() == [1] and v2.selected.sum() == 28
    assert checksums[2] == pytest.approx(weights_checksum(v2.id.to_numpy(), v2.weight.to_numpy()))
    assert _values(client, rid, "htl/weights_checksum_max_abs_diff")[2] == 0.0
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"

    # the finished run learned and is fully tracked
    dice = _values(client, rid, "val/dice")
    assert max(dice[1], dice[2]) > dice[0]                         # validation Dice rises
    assert run.data.params["train.epochs"] == "3"
    assert run.data.tags["htl.dataset_fingerprint"] == read_manifest(synth_dataset)["fingerprint"]
    assert run.data.tags["htl.version.ray"] == "2.60.0"
    assert "val/worst_group/site/dice" in run.data.metrics
    assert {"config.yaml", "best_checkpoint", "evaluation", "htl"} <= {
        a.path for a in client.list_artifacts(rid)}
    table = pd.read_parquet(client.download_artifacts(rid, "evaluation/val_per_sample.parquet",
                                                      str(tmp_path)))
    n_val = read_manifest(synth_dataset)["split_counts"]["val"]
    assert len(table) == n_val and table.id.is_unique                 # no val image lost
    assert table.dice.between(0, 1).all()
    best_epoch = int(run.data.tags["htl.best_epoch"])
    assert table.dice.mean() == pytest.approx(dice[best_epoch])
    assert run.data.metrics["best/val/dice"] == pytest.approx(dice[best_epoch])
    state = torch.load(client.download_artifacts(rid, "best_checkpoint/checkpoint.pt",
                                                 str(tmp_path)), weights_only=True)
    create_model(cfg.model).load_state_dict(state["model"])           # a loadable model
    assert state["epoch"] == best_epoch


def test_epochs_advance_while_an_asynchronous_refresh_runs(ray_cluster, synth_dataset,
                                                           tmp_path, tracking_uri):
    cfg = _cfg(synth_dataset, tmp_path, tracking_uri, "async", "train.epochs=2")
    outcome = run_training(cfg, refresh_delay_s=10.0)
    client = MlflowClient(tracking_uri)
    rid = outcome.mlflow_run_id
    epoch_done = {s: m.timestamp for s, m in _hist(client, rid, "val/dice").items()}
    refresh = _hist(client, rid, "htl/refresh_wall_s")
    assert refresh[1].value >= 10.0
    # version 1 was submitted after epoch 0 and published only after epoch 1 had finished:
    assert epoch_done[0] < epoch_done[1] < refresh[1].timestamp
    assert _values(client, rid, "htl/version_in_use") == {0: 0.0, 1: 0.0}
    assert _values(client, rid, "htl/wait_s")[1] < 5.0              # training did not wait
    assert sorted(load_versions(run_dir_of(cfg))) == [1]           # still persisted at the end
