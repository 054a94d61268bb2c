"""The worker loop's steps, run in this process as rank 0 of 1 on real Ray Datasets and a real
model: what an epoch trains on under each attention strategy, what it measures, and the
metrics an epoch reports. (The loop as a whole, under Ray Train with several workers, is
tested by test_train_trainer and test_htl_training.)"""

import math

import numpy as np
import pytest

from htl_ray.config import from_dict
from htl_ray.data.loading import TRAIN_COLUMNS, split_dataset
from htl_ray.device import placement
from htl_ray.htl.client import HtlClient
from htl_ray.models import create_model
from htl_ray.supervision import SETTINGS
from htl_ray.train.evaluation import VAL_META_COLUMNS
from htl_ray.train.loop import (
    EpochTraining,
    Worker,
    epoch_metrics,
    train_epoch,
    train_loss,
    validate,
)
from htl_ray.train.optimization import make_optimizer, make_scheduler

SMALL_MODEL = {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]}


def _worker(data, *overrides: tuple[str, dict]) -> Worker:
    raw = {"data": {"path": str(data), "batch_size": 8}, "model": SMALL_MODEL,
           "train": {"epochs": 3}}
    for section, values in overrides:
        raw.setdefault(section, {}).update(values)
    cfg = from_dict(raw)
    model = create_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.parameters())
    objective = SETTINGS[cfg.supervision.setting](cfg)
    objective.attach(model)
    # no coordinator: these steps only read the version the client has adopted
    return Worker(cfg=cfg, loop_config={}, rank=0, world=1, place=placement("cpu"),
                  model=model, optimizer=optimizer,
                  scheduler=make_scheduler(cfg.train, optimizer), objective=objective,
                  htl=HtlClient(None, htl=cfg.htl, epochs=cfg.train.epochs, version=0))


def _adopt(w: Worker, weights: dict[str, float]) -> None:
    """As `HtlClient.adopt` leaves a rank after version 1 was published."""
    w.htl.coordinator = "the coordinator (not asked by these steps)"
    w.htl.version, w.htl.weights = 1, weights


@pytest.fixture(scope="module")
def train_ids(synth_dataset) -> list[str]:
    return split_dataset(synth_dataset, "train", columns=["id"]).to_pandas()["id"].tolist()


def test_an_epoch_without_attention_trains_every_sample_once(ray_cluster, synth_dataset,
                                                             train_ids):
    w = _worker(synth_dataset)
    lr = w.optimizer.param_groups[0]["lr"]
    out = train_epoch(w, split_dataset(synth_dataset, "train"), epoch=0)
    assert out.seen == len(train_ids) and out.attended == 0
    assert math.isfinite(out.loss_sum) and out.loss_sum > 0
    assert out.lr == lr and w.optimizer.param_groups[0]["lr"] < lr     # cosine stepped once


@pytest.mark.parametrize("attention", ["reweight", "oversample", "both"])
def test_an_attending_epoch_trains_the_rows_its_strategy_draws(ray_cluster, synth_dataset,
                                                               train_ids, attention):
    """Five samples weigh 4 (others 0.25): reweight trains every sample once; oversample draws
    each 4 times (⌊4⌋ + 0) and each other one 0 or 1 times; both draws √4 = 2 copies."""
    w = _worker(synth_dataset, ("htl", {"method": "htl", "attention": attention,
                                        "warmup_epochs": 1}))
    hard = set(train_ids[:5])
    _adopt(w, {i: (4.0 if i in hard else 0.25) for i in train_ids})
    data = split_dataset(synth_dataset, "train")
    assert train_epoch(w, data, epoch=0).attended == 0           # still warming up
    out = train_epoch(w, data, epoch=1)
    assert out.attended == 5
    others = len(train_ids) - 5
    if attention == "reweight":
        assert out.seen == len(train_ids)
    elif attention == "oversample":
        assert 5 * 4 <= out.seen <= 5 * 4 + others and out.seen < len(train_ids)
    else:
        assert 5 * 2 <= out.seen <= 5 * 2 + others


def test_epoch_metrics_gather_every_rank_and_keep_the_best(ray_cluster, synth_dataset):
    w = _worker(synth_dataset)
    val = split_dataset(synth_dataset, "val", columns=TRAIN_COLUMNS + VAL_META_COLUMNS)
    table = validate(w, val)
    assert len(table) == val.count() and table["id"].is_monotonic_increasing
    ranks = [EpochTraining(loss_sum=6.0, seen=3, data_wait_s=0.5, lr=0.1, seconds=2.0),
             EpochTraining(loss_sum=1.0, seen=1, data_wait_s=9.0, lr=0.1, seconds=3.0)]
    assert train_loss(ranks) == pytest.approx(7.0 / 4)                # per sample, all ranks
    metrics = epoch_metrics(w, 0, ranks, table, checksums=[5.0, 5.0], wait_s=0.0,
                            attend=False)
    assert metrics["train/loss"] == pytest.approx(1.75) and metrics["train/samples"] == 4
    assert metrics["time/data_wait_s"] == 0.5 and metrics["time/train_epoch_s"] == 2.0
    assert metrics["weights_checksum_max_abs_diff"] == 0.0
    assert metrics["val/dice"] == pytest.approx(table["dice"].mean())
    assert not any(k.startswith("htl/") for k in metrics)              # no HTL, no HTL metrics
    better = table.assign(dice=1.0)
    assert epoch_metrics(w, 1, ranks, better, checksums=[5.0, 5.5], wait_s=0.0,
                         attend=False)["val/best_dice"] == 1.0
    worse = table.assign(dice=0.0)
    again = epoch_metrics(w, 2, ranks, worse, checksums=[5.0, 5.0], wait_s=0.0, attend=False)
    assert again["val/dice"] == 0.0 and again["val/best_dice"] == 1.0  # the best is kept


def test_an_attending_epoch_reports_the_htl_state_of_every_rank(ray_cluster, synth_dataset):
    w = _worker(synth_dataset, ("htl", {"method": "htl"}))
    _adopt(w, {"a": 2.0})
    w.htl.checksum = 3.0
    table = validate(w, split_dataset(synth_dataset, "val",
                                      columns=TRAIN_COLUMNS + VAL_META_COLUMNS))
    ranks = [EpochTraining(seen=1, attended=2), EpochTraining(seen=1, attended=3)]
    metrics = epoch_metrics(w, 1, ranks, table, checksums=[1.0, 1.0], wait_s=0.25,
                            attend=True)
    assert metrics["htl/attended_samples"] == 5 and metrics["htl/version_in_use"] == 1
    assert metrics["htl/wait_s"] == 0.25 and metrics["htl/attention_active"] == 1.0
    assert metrics["htl/weights_checksum"] == 3.0
    assert np.isfinite(metrics["val/dice"])
