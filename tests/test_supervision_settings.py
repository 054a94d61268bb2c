"""The supervision settings on real Ray Datasets and in real 2-worker Ray Train runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import pids_titled
from mlflow.tracking import MlflowClient

from htl_ray.checkpoints import load_checkpoint
from htl_ray.config import load_config
from htl_ray.data.loading import split_dataset
from htl_ray.htl.coordinator import load_versions, version_path
from htl_ray.run_dir import read_meta
from htl_ray.supervision import SETTINGS
from htl_ray.supervision.labels import mask_boxes
from htl_ray.supervision.settings import repeats_for_share
from htl_ray.train.trainer import run_training


def _cfg(dataset, tmp_path, *extra, uri=None):
    tracking = [f"tracking.uri={uri}"] if uri else []
    return load_config(None, [f"data.path={dataset}", f"run.storage_path={tmp_path / 'runs'}",
                              *tracking, *extra])


def _masks(ds) -> pd.DataFrame:
    df = ds.to_pandas().set_index("id").sort_index()
    df["m"] = [np.frombuffer(b, np.uint8).reshape(h, w)
               for b, h, w in zip(df["mask"], df["height"], df["width"], strict=True)]
    return df


def test_semi_hides_masks_on_the_driver_and_supervised_uses_the_same_subset(
        ray_cluster, synth_dataset, tmp_path):
    raw = split_dataset(synth_dataset, "train")
    original = _masks(raw)
    semi_cfg = _cfg(synth_dataset, tmp_path, "supervision.setting=semi",
                    "supervision.label_fraction=0.25")
    semi = _masks(SETTINGS["semi"].prepare_train(semi_cfg, raw))
    n = len(original)
    assert semi["labeled"].sum() == round(0.25 * n)
    for sid, row in semi.iterrows():
        if row["labeled"]:
            assert np.array_equal(row["m"], original.loc[sid, "m"])
        else:
            assert row["m"].sum() == 0                           # the real mask never left
    sup_cfg = _cfg(synth_dataset, tmp_path, "supervision.label_fraction=0.25")
    sup = _masks(SETTINGS["supervised"].prepare_train(sup_cfg, raw))
    assert set(sup.index) == set(semi.index[semi["labeled"]])   # "the same 25% alone"
    other_seed = _masks(SETTINGS["semi"].prepare_train(
        _cfg(synth_dataset, tmp_path, "supervision.setting=semi",
             "supervision.label_fraction=0.25", "run.seed=1"), raw))
    assert set(other_seed.index[other_seed["labeled"]]) != set(semi.index[semi["labeled"]])


def test_semi_epoch_repeats_labeled_rows_to_the_requested_share(ray_cluster, synth_dataset,
                                                               tmp_path, capsys):
    raw = split_dataset(synth_dataset, "train")
    cfg = _cfg(synth_dataset, tmp_path, "supervision.setting=semi",
               "supervision.label_fraction=0.25")
    scored = SETTINGS["semi"].prepare_train(cfg, raw)
    capsys.readouterr()
    epoch = SETTINGS["semi"].epoch_rows(cfg, scored).to_pandas()
    lines = capsys.readouterr().out.splitlines()
    n = scored.count()
    n_lab = round(0.25 * n)
    counts = epoch.groupby("id").size()
    labeled = set(epoch.loc[epoch["labeled"], "id"])
    assert len(labeled) == n_lab and len(counts) == n              # nothing lost or invented
    assert (counts[list(labeled)] == 3).all()                       # 0.5·(3/4)/(0.5·1/4) = 3
    assert (counts.drop(list(labeled)) == 1).all()
    assert epoch["labeled"].mean() == 3 * n_lab / (n - n_lab + 3 * n_lab)
    # shuffled once, so both halves of the epoch carry about the same share of masks
    half = len(epoch) // 2
    assert abs(epoch["labeled"][:half].mean() - epoch["labeled"][half:].mean()) < 0.2
    assert "repeated ×3" in lines[0]
    natural = _cfg(synth_dataset, tmp_path, "supervision.setting=semi",
                   "supervision.label_fraction=0.25", "supervision.labeled_share=0")
    assert SETTINGS["semi"].epoch_rows(natural, scored) is scored


def test_repeats_for_share():
    assert repeats_for_share(25, 75, 0.5) == 3
    assert repeats_for_share(50, 50, 0.5) == 1
    assert repeats_for_share(10, 90, 0.0) == 1 and repeats_for_share(0, 90, 0.5) == 1
    assert repeats_for_share(10, 90, 0.25) == 3                    # 30 of 120 rows


def test_weak_replaces_every_mask_by_its_box(ray_cluster, synth_dataset, tmp_path):
    raw = split_dataset(synth_dataset, "train")
    original = _masks(raw)
    weak = _masks(SETTINGS["weak"].prepare_train(
        _cfg(synth_dataset, tmp_path, "supervision.setting=weak"), raw))
    for sid, row in weak.iterrows():
        box = mask_boxes(original.loc[sid, "m"][None])[0].astype(int)
        x0, y0, x1, y1 = box
        assert row["m"].sum() == (x1 - x0) * (y1 - y0)
        assert row["m"][y0:y1, x0:x1].all()
    jittered = [_masks(SETTINGS["weak"].prepare_train(_cfg(
        synth_dataset, tmp_path, "supervision.setting=weak", "supervision.box_jitter=0.2"),
        raw)) for _ in range(2)]
    same = [np.array_equal(a, b) for a, b in zip(jittered[0]["m"], jittered[1]["m"], strict=True)]
    moved = [not np.array_equal(a, b) for a, b in zip(jittered[0]["m"], weak["m"], strict=True)]
    assert all(same) and np.mean(moved) > 0.8                  # seeded, and really jittered


RUN = ["data.batch_size=8", "model.decoder_channels=[32,16,8,8,4]", "train.lr=0.003",
       "scaling.num_workers=2", "scaling.resources_per_worker={CPU: 0.5}", "htl.method=htl",
       "htl.refresh_every=1", "htl.warmup_epochs=1", "htl.scorer_batch_size=64",
       "htl.sparsities=[0.3,0.6]", "htl.asynchronous=false", "train.epochs=2",
       "data.limit_train=96"]


def _run(synth_dataset, tmp_path, tracking_uri, name, *extra):
    cfg = _cfg(synth_dataset, tmp_path, f"run.name={name}", *RUN, *extra, uri=tracking_uri)
    outcome = run_training(cfg)
    client = MlflowClient(tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    return outcome, run


def _kill_a_worker_then_the_coordinator(run_dir: Path, killed: dict) -> None:
    """SIGKILL one Ray Train worker once epoch 0's checkpoint is registered (the kill lands in
    epoch 1, while it waits for HTL v1 or trains), then the refresh coordinator once v1 is on
    disk."""
    deadline = time.time() + 300
    while time.time() < deadline and not list(run_dir.glob("checkpoint_*/meta.json")):
        time.sleep(0.2)
    time.sleep(3.0)    # the controller registers it at its next poll (conftest: every 0.5 s)
    for pid in pids_titled("RayTrainWorker")[:1]:
        os.kill(pid, signal.SIGKILL)
        killed.update(worker=pid, worker_at=time.time())
    while time.time() < deadline and not version_path(run_dir, 1).is_file():
        time.sleep(0.2)
    for pid in pids_titled("RefreshCoordinator")[:1]:
        os.kill(pid, signal.SIGKILL)
        killed.update(coordinator=pid)


def test_semi_htl_run_survives_a_killed_worker_and_a_killed_coordinator(
        ray_cluster, synth_dataset, tmp_path, tracking_uri):
    """Mean Teacher + label-free HTL, 2 workers. In epoch 1 one worker process is SIGKILLed
    (Ray Train, train.max_failures=1, restarts the group from epoch 0's checkpoint) and then
    the refresh coordinator's process (Ray restarts it; it reloads v1 from disk)."""
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_then_the_coordinator,
                              args=(tmp_path / "runs" / "semi", killed), daemon=True)
    killer.start()
    outcome, run = _run(synth_dataset, tmp_path, tracking_uri, "semi",
                        "supervision.setting=semi", "supervision.label_fraction=0.25",
                        "supervision.consistency_rampup_epochs=1", "train.max_failures=1")
    killer.join()
    assert run.info.status == "FINISHED" and run.data.tags["htl.setting"] == "semi"
    client = MlflowClient(tracking_uri)
    dice = client.get_metric_history(run.info.run_id, "val/dice")
    # killed before epoch 1 ended; then epoch 1 ran (once) on the restarted workers
    assert {"worker", "coordinator"} <= set(killed) and sorted(m.step for m in dice) == [0, 1]
    assert killed["worker_at"] * 1000 < max(m.timestamp for m in dice)
    assert {m.step: m.value for m in client.get_metric_history(
        run.info.run_id, "htl/version_in_use")} == {0: 0.0, 1: 1.0}    # the same HTL version
    assert sorted(read_meta(p.parent)["epoch"]
                  for p in outcome.run_dir.glob("checkpoint_*/meta.json")) == [0, 1]
    m = run.data.metrics
    assert 0.0 < m["val/dice"] <= 1.0 and m["htl/attention_active"] == 1.0
    tables = load_versions(outcome.run_dir)
    assert sorted(tables) == [1]
    # HTL is label-free: no GT-aware term, as unlabeled images have no mask to compare with;
    # the loss/EL2N comparators' scores use the teacher's own mask there, so EL2N is at most
    # 0.5 on every unlabeled image (72 of the 96)
    assert {"h", "weight", "loss", "el2n", "labeled"} <= set(tables[1].columns)
    assert tables[1]["labeled"].sum() == 24
    assert not {"h_gt", "gt_gap"} & set(tables[1].columns)
    assert (tables[1]["el2n"] <= 0.5).sum() >= 72 and tables[1]["el2n"].between(0, 1).all()
    # the epoch repeats labeled rows; what is scored holds every image exactly once
    assert len(tables[1]) == 96 and tables[1]["id"].is_unique
    assert tables[1]["h"].between(0, 1).all()
    state = load_checkpoint(outcome.best_checkpoint)
    assert set(state) >= {"model", "student", "teacher_step"}
    assert state["teacher_step"] > 0
    differs = [not torch.equal(state["model"][k], state["student"][k])
               for k in state["model"] if state["model"][k].is_floating_point()]
    assert any(differs)                          # the teacher is an average, not the student


def test_weakly_supervised_run_trains_on_boxes_and_validates_on_masks(
        ray_cluster, synth_dataset, tmp_path, tracking_uri):
    outcome, run = _run(synth_dataset, tmp_path, tracking_uri, "weak",
                        "supervision.setting=weak", "htl.method=erm",
                        "supervision.pairwise_warmup_epochs=1")
    assert run.info.status == "FINISHED" and run.data.tags["htl.setting"] == "weak"
    history = MlflowClient(tracking_uri).get_metric_history(outcome.mlflow_run_id, "val/dice")
    assert len(history) == 2 and all(0.0 < m.value <= 1.0 for m in history)
    assert "htl/version_in_use" not in run.data.metrics          # erm: no refresh actor


def test_scoring_spec_follows_the_setting(tmp_path):
    from htl_ray.htl.coordinator import spec_from_config

    weak = spec_from_config(_cfg("d", tmp_path, "supervision.setting=weak"))
    semi = spec_from_config(_cfg("d", tmp_path, "supervision.setting=semi",
                                 "supervision.label_fraction=0.5"))
    sup = spec_from_config(_cfg("d", tmp_path))
    assert (weak.label_kind, weak.with_labels) == ("box", True)
    assert (semi.with_labels, semi.pseudo_labels) == (False, True)
    assert (sup.label_kind, sup.with_labels, sup.pseudo_labels) == ("mask", True, False)
    assert weak.pseudo_labels is False


def test_each_setting_describes_itself_for_the_start_up_line(tmp_path):
    def line(*o):
        cfg = _cfg("d", tmp_path, *o)
        return SETTINGS[cfg.supervision.setting].describe(cfg)

    assert line() == "supervised"
    assert line("supervision.label_fraction=0.5", "run.seed=3") == \
        "supervised, label fraction f=0.5 (seed 3)"
    assert line("supervision.setting=semi", "supervision.label_fraction=0.25",
                "supervision.label_seed=7") == \
        "semi-supervised (Mean Teacher), label fraction f=0.25 (seed 7)"
    assert line("supervision.setting=weak", "supervision.box_jitter=0.1") == \
        "weakly supervised (boxes, jitter σ=0.1)"
