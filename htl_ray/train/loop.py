"""The supervised Ray Train worker loop: train an epoch on this worker's shard, validate, report.

Every rank runs this function. Validation is shared: rank r evaluates validation rows
i ≡ r (mod world size) and the per-image results are all-gathered, so every rank computes the
same metrics and no validation image is dropped or counted twice. Rank 0 writes the
checkpoint and logs metrics to MLflow as each epoch ends (a later crash loses nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from htl_ray.checkpoints import resume_state, save_checkpoint
from htl_ray.collectives import barrier, gather
from htl_ray.config import ExperimentConfig, from_dict
from htl_ray.console import show_progress
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import iter_decoded
from htl_ray.device import placement
from htl_ray.errors import UserError
from htl_ray.htl.attention import ATTENTION, attended_count
from htl_ray.htl.client import HtlClient
from htl_ray.losses import weighted_mean
from htl_ray.models import create_model, load_initial_weights, state_checksum
from htl_ray.run_dir import PER_SAMPLE_FILE, RunDir, read_meta
from htl_ray.supervision import SETTINGS
from htl_ray.tracking.outbox import TrackingOutbox
from htl_ray.train.evaluation import evaluate, split_metrics
from htl_ray.train.optimization import make_optimizer, make_scheduler

logger = logging.getLogger(__name__)


class NonFiniteTraining(UserError):
    """The loss or the checkpoint metric stopped being a number: the run cannot recover, and
    finishing it would log a model that predicts nothing as a result."""


def diverged(name: str, value: float, *, epoch: int, cfg: ExperimentConfig,
             loop_config: dict[str, Any]) -> bool:
    """True (after leaving the reason) when `value` is not a number any more. The caller
    returns: every rank sees the same gathered value, so all stop at this epoch without a
    report, and the driver raises NonFiniteTraining from the note rank 0 leaves in the run
    directory — one error line, not a worker traceback in Ray's log, and nothing Ray Train
    would retry (a raise here would be retried `train.max_failures` times, for ever at -1)."""
    if math.isfinite(value):
        return False
    message = (f"{name} is {value} at epoch {epoch + 1}: training diverged (train.lr="
               f"{cfg.train.lr:g}; try a smaller train.lr); the run is marked FAILED and the "
               "checkpoints of earlier epochs are kept")
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        RunDir(loop_config["run_dir"]).diverged_file.write_text(
            json.dumps({"epoch": epoch, "name": name, "message": message}))
    return True


class InjectedFault(RuntimeError):
    """Raised on purpose by tests that interrupt a run after a given epoch."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _quiet_ray_logs() -> None:
    """Ray Train logs every report at INFO (whole metric dicts); keep worker output readable."""

    from ray.data import DataContext
    from ray.train.v2._internal.execution import context as v2_context

    logging.getLogger(v2_context.__file__).setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    show_progress(stream=sys.__stdout__)        # this module's lines (console.py says why)


def _tracked(metrics: dict[str, Any]) -> dict[str, float]:
    """What goes to MLflow of an epoch's metrics (the epoch is the step)."""
    return {k: v for k, v in metrics.items() if k != "epoch"}


@dataclass
class EpochTraining:
    """What one epoch of training on this rank measured."""

    loss_sum: float = 0.0          # Σ loss·batch size
    seen: int = 0                  # samples trained on (oversampled copies counted)
    attended: int = 0              # samples with an HTL weight above 1
    data_wait_s: float = 0.0       # blocked on the Ray Data iterator (decoding in its thread)
    data_prep_s: float = 0.0       # attention sampling, augmentation, placement in this loop
    lr: float = 0.0                # the learning rate the epoch trained with
    seconds: float = 0.0


@dataclass
class Worker:
    """One rank's training run: what the steps of `train_loop_per_worker` share."""

    cfg: ExperimentConfig
    loop_config: dict[str, Any]
    rank: int
    world: int
    place: Any                     # device.Placement
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Any                 # supervision.Objective
    start_epoch: int = 0
    best: float = -math.inf
    htl_version: int = 0
    resumed_from: Path | None = None
    htl: HtlClient | None = None
    outbox: TrackingOutbox | None = None


def set_up_worker(loop_config: dict[str, Any]) -> Worker:
    """Seeds, threads, the model on this rank's device, its optimiser, schedule and objective."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(loop_config["config"])
    _quiet_ray_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cpus = float(cfg.scaling.resources_per_worker.get("CPU", 1.0))
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(math.floor(cpus))))
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed + rank)
    # on its device before the optimizer exists, so restored optimizer state lands there too
    place = placement(ray.train.torch.get_device(), cfg.train.precision, cfg.train.memory_format)
    model = place.prepare(create_model(cfg.model))
    optimizer = make_optimizer(cfg.train, model.parameters())
    return Worker(cfg=cfg, loop_config=loop_config, rank=rank, world=world, place=place,
                  model=model, optimizer=optimizer,
                  scheduler=make_scheduler(cfg.train, optimizer),
                  objective=SETTINGS[cfg.supervision.setting](cfg))


def restore_or_initialise(w: Worker) -> None:
    """Continue from this run's newest loadable checkpoint, or start from
    `model.init_checkpoint` (pinned by the driver), or from the random init."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as registered:
        resumed = resume_state(registered, w.loop_config["run_dir"])
    if resumed:
        directory, state = resumed
        w.objective.restore(state, w.model)
        w.optimizer.load_state_dict(state["optimizer"])
        if w.scheduler is not None and state.get("scheduler"):
            w.scheduler.load_state_dict(state["scheduler"])
        w.start_epoch = int(state["epoch"]) + 1
        w.htl_version = int(state.get("htl_version", 0))
        w.resumed_from = Path(directory)
        if w.rank == 0:
            logger.info(f"[htl-ray] resuming from checkpoint of epoch {state['epoch']} "
                        f"({directory})")
    elif w.loop_config.get("init_checkpoint_file"):
        # never over a checkpoint of this run
        load_initial_weights(w.model, w.loop_config["init_checkpoint_file"])
    if w.rank == 0:
        logger.info(f"[htl-ray] workers compute on {w.place.describe()}")


def connect(w: Worker) -> None:
    """Wrap the model for DDP, join the HTL coordinator, and (rank 0) open the outbox that
    keeps MLflow writes on disk until the tracking server takes them."""
    import ray.train.torch

    w.model = ray.train.torch.prepare_model(w.model)
    w.objective.attach(_unwrap(w.model))
    w.htl = HtlClient(w.loop_config.get("coordinator"), htl=w.cfg.htl,
                      epochs=w.cfg.train.epochs, version=w.htl_version)
    if w.resumed_from is not None and w.htl.enabled and w.rank == 0:
        w.htl.catch_up(w.objective.snapshot_model(_unwrap(w.model)), w.start_epoch - 1)
    if w.rank == 0:
        w.outbox = TrackingOutbox(w.loop_config["run_dir"], w.loop_config["tracking_uri"],
                                  w.loop_config["mlflow_run_id"], "rank0")
    if w.resumed_from is not None and w.outbox is not None:
        # the resumed epoch's metrics again, with their first timestamp: stored once, and sent
        # if the previous worker group died between its checkpoint upload and its MLflow write
        meta = read_meta(w.resumed_from)
        if "logged_at_ms" in meta:
            w.outbox.metrics(_tracked(meta["metrics"]), step=int(meta["epoch"]),
                             ts=meta["logged_at_ms"])


def train_epoch(w: Worker, train_shard: Any, epoch: int, *, started: float | None = None
                ) -> EpochTraining:
    """One pass over this rank's shard, with the adopted HTL weights when the epoch attends.
    `seconds` counts from `started` (the epoch's start, before the wait for an HTL version)."""
    cfg, device = w.cfg, w.place.device
    t0 = time.time() if started is None else started
    attend = w.htl.attends(epoch)
    attention = ATTENTION[cfg.htl.attention]
    w.model.train()
    gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
    rng = np.random.default_rng([cfg.run.seed, epoch, w.rank])
    out = EpochTraining(lr=w.optimizer.param_groups[0]["lr"])
    t_next = time.perf_counter()
    for x, y, batch in iter_decoded(       # decoded while the previous step trains
            train_shard, batch_size=cfg.data.batch_size,
            local_shuffle_buffer_size=max(4 * cfg.data.batch_size, 64),
            local_shuffle_seed=cfg.run.seed * 7919 + epoch * 31 + w.rank):
        t_batch = time.perf_counter()
        out.data_wait_s += t_batch - t_next
        w_loss, rows = None, np.arange(len(batch["id"]))
        if attend:
            weights = w.htl.batch_weights(batch["id"])
            out.attended += attended_count(weights, lam=cfg.htl.lam)
            rows, w_rows = attention.batch(weights, rng)
            x, y = x[rows], y[rows]
            w_loss = torch.as_tensor(w_rows, dtype=torch.float32, device=device)
        # augmented where it trains: on a GPU, augmenting on the host bounded the step
        # (bench/gpu_throughput.py); on the CPU this order changes nothing
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x, y = augment_batch(x, y, cfg.data.augment, gen)
        x = w.place.inputs(x)
        out.data_prep_s += time.perf_counter() - t_batch
        with w.place.autocast():
            per_sample = w.objective.per_sample_loss(w.model, x, y, batch, rows, epoch, gen)
        loss = weighted_mean(per_sample, w_loss)
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        w.objective.after_step(_unwrap(w.model))
        out.loss_sum += float(loss.detach()) * len(x)
        out.seen += len(x)
        t_next = time.perf_counter()
    if w.scheduler is not None:
        w.scheduler.step()
    out.seconds = time.time() - t0
    return out


def validate(w: Worker, val_iter: Any) -> pd.DataFrame:
    """Every validation image's metrics, the same table on every rank: each rank evaluates
    rows i ≡ rank (mod world) and the results are all-gathered."""
    local = evaluate(w.objective.eval_model(w.model), val_iter,
                     batch_size=w.cfg.data.val_batch_size, rank=w.rank, world=w.world,
                     place=w.place)
    return pd.concat(gather(local), ignore_index=True).sort_values("id").reset_index(drop=True)


def train_loss(trained: list[EpochTraining]) -> float:
    """The mean per-sample training loss over every rank's samples."""
    return sum(t.loss_sum for t in trained) / max(1, sum(t.seen for t in trained))


def epoch_metrics(w: Worker, epoch: int, trained: list[EpochTraining], table: pd.DataFrame,
                  *, checksums: list[float], wait_s: float, attend: bool) -> dict[str, Any]:
    """The epoch's metrics from every rank's training (`trained`, gathered) and the
    validation table; the same dict on every rank (time/epoch_s is added by `report`)."""
    mine = trained[w.rank]
    metrics = {"epoch": epoch, "train/loss": train_loss(trained),
               "train/samples": float(sum(t.seen for t in trained)),
               "time/train_epoch_s": mine.seconds,
               # rank 0's: blocked on the Ray Data iterator; decoding + augmenting
               "time/data_wait_s": trained[0].data_wait_s,
               "time/data_prep_s": trained[0].data_prep_s,
               "lr": mine.lr,
               "weights_checksum": checksums[0],
               "weights_checksum_max_abs_diff": float(max(checksums) - min(checksums))}
    htl_sums = gather(w.htl.checksum)
    if w.htl.enabled:
        metrics.update({"htl/version_in_use": float(w.htl.version), "htl/wait_s": wait_s,
                        "htl/attention_active": float(attend),
                        "htl/weights_checksum": htl_sums[0],
                        "htl/weights_checksum_max_abs_diff": float(max(htl_sums)
                                                                   - min(htl_sums)),
                        "htl/attended_samples": float(sum(t.attended for t in trained))})
    metrics.update(split_metrics(table, "val"))
    w.best = max(w.best, metrics.get(w.cfg.train.checkpoint_metric, -math.inf))
    metrics["val/best_" + w.cfg.train.checkpoint_metric.split("/")[-1]] = w.best
    return metrics


def report(w: Worker, epoch: int, metrics: dict[str, Any], table: pd.DataFrame,
           *, started: float) -> None:
    """Rank 0 writes the checkpoint (weights, optimiser, per-image validation table), reports
    it to Ray Train, and only then logs the metrics; other ranks report the metrics alone."""
    import ray.train

    metrics["time/epoch_s"] = time.time() - started
    if w.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    cfg = w.cfg
    logged_at = int(time.time() * 1000)
    logger.info(f"[htl-ray] epoch {epoch + 1}/{cfg.train.epochs} "
                f"loss {metrics['train/loss']:.4f} "
                f"val dice {metrics['val/dice']:.4f} iou {metrics['val/iou']:.4f} "
                f"thr-jaccard {metrics['val/thresholded_jaccard']:.4f} "
                f"({metrics['time/epoch_s']:.1f}s)")
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, w.objective.eval_model(_unwrap(w.model)), w.optimizer, w.scheduler,
                        epoch=epoch, metrics=metrics,
                        extra={"htl_version": w.htl.version, "logged_at_ms": logged_at,
                               "model_config": dataclasses.asdict(cfg.model),
                               "input_size": w.loop_config.get("input_size"),
                               "setting": cfg.supervision.setting},
                        extra_state=w.objective.checkpoint_state(_unwrap(w.model)))
        table.to_parquet(os.path.join(tmp, PER_SAMPLE_FILE), index=False)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # only now, with the checkpoint in storage: if this worker group dies during the upload,
    # the resumed run trains this epoch again and MLflow holds it once. An outage never stops
    # training (the outbox keeps what it cannot send).
    w.outbox.metrics(_tracked(metrics), step=epoch, ts=logged_at)


def inject_fault_if_asked(w: Worker, epoch: int) -> None:
    """The test hook `fault_after_epoch`: fail after the epoch is complete on every rank (rank
    0's checkpoint uploaded and its metrics tracked), as a crash between epochs would find it."""
    if w.loop_config.get("fault_after_epoch") == epoch:
        barrier()
        raise InjectedFault(f"injected fault after epoch {epoch}")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Every rank: set up, resume, then per epoch adopt the HTL version, train, validate, stop
    if diverged, hand the coordinator a snapshot when a refresh is due, and report."""
    import ray.train

    w = set_up_worker(loop_config)
    restore_or_initialise(w)
    connect(w)
    train_shard = ray.train.get_dataset_shard("train")
    val_iter = ray.train.get_dataset_shard("val")
    for epoch in range(w.start_epoch, w.cfg.train.epochs):
        started = time.time()
        wait_s = w.htl.adopt(w.rank)
        attend = w.htl.attends(epoch)
        trained = gather(train_epoch(w, train_shard, epoch, started=started))
        table = validate(w, val_iter)
        checksums = gather(state_checksum(_unwrap(w.model)))
        # the same values on every rank (gathered), so every rank stops here together, before
        # a checkpoint or an HTL refresh of weights that are no longer numbers (the last step
        # of an epoch can break the weights while its loss was still finite)
        if diverged("train/loss", train_loss(trained), epoch=epoch, cfg=w.cfg,
                    loop_config=loop_config) \
                or diverged("weights (sum of |w|)", checksums[0], epoch=epoch, cfg=w.cfg,
                            loop_config=loop_config):
            return
        if w.rank == 0 and w.htl.refreshes_after(epoch):
            w.htl.submit(w.objective.snapshot_model(_unwrap(w.model)), epoch)
        metrics = epoch_metrics(w, epoch, trained, table, checksums=checksums, wait_s=wait_s,
                                attend=attend)
        report(w, epoch, metrics, table, started=started)
        inject_fault_if_asked(w, epoch)
