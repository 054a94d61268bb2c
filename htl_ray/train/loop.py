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
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from htl_ray.config import ExperimentConfig, from_dict
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import iter_decoded
from htl_ray.device import placement
from htl_ray.errors import UserError
from htl_ray.htl.attention import ATTENTION, oversample_counts
from htl_ray.htl.coordinator import weights_checksum
from htl_ray.losses import weighted_mean
from htl_ray.models import create_model, load_initial_weights, state_checksum
from htl_ray.supervision import SETTINGS
from htl_ray.tracking.outbox import TrackingOutbox
from htl_ray.train.checkpoints import (
    PER_SAMPLE_FILE,
    read_meta,
    resume_state,
    save_checkpoint,
)
from htl_ray.train.evaluation import evaluate, split_metrics


class NonFiniteTraining(UserError):
    """The loss or the checkpoint metric stopped being a number: the run cannot recover, and
    finishing it would log a model that predicts nothing as a result."""


DIVERGED_FILE = "diverged.json"     # in the run directory: why a run stopped at an epoch


def diverged(name: str, value: float, epoch: int, cfg, loop_config: dict[str, Any]) -> bool:
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
        path = Path(loop_config["run_dir"]) / DIVERGED_FILE
        path.write_text(json.dumps({"epoch": epoch, "name": name, "message": message}))
    return True


class InjectedFault(RuntimeError):
    """Raised on purpose by tests that interrupt a run after a given epoch."""


def make_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    registry = {
        "adamw": lambda: torch.optim.AdamW(params, lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay),
        "adam": lambda: torch.optim.Adam(params, lr=cfg.train.lr,
                                         weight_decay=cfg.train.weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=cfg.train.lr, momentum=0.9,
                                       weight_decay=cfg.train.weight_decay),
    }
    return registry[cfg.train.optimizer]()


def make_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer):
    if cfg.train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    return None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _broadcast(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


class HtlState:
    """The HTL version in use on this rank, its id → weight map, and pending refreshes."""

    def __init__(self, cfg: ExperimentConfig, coordinator: Any, version: int):
        self.cfg = cfg
        self.coordinator = coordinator
        self.version = version
        self.resumed_version: int | None = version if version else None
        self.pending: int | None = None
        self.weights: dict[str, float] = {}
        self.checksum = 0.0

    @property
    def enabled(self) -> bool:
        return self.coordinator is not None

    def adopt(self, rank: int) -> float:
        """At an epoch start: rank 0 picks the version, every rank adopts it. Returns the time
        this rank waited for the coordinator."""
        import ray

        t0 = time.time()
        if rank == 0:
            if self.resumed_version is not None:
                chosen = self.resumed_version          # a resumed run keeps its version
            else:
                if not self.cfg.htl.asynchronous:
                    # synchronous: the refresh submitted after the last epoch must be in; after
                    # a worker-group restart this rank does not know it, so wait for them all
                    ray.get(self.coordinator.wait_for.remote(self.pending)
                            if self.pending is not None else self.coordinator.drain.remote())
                error = ray.get(self.coordinator.error.remote())
                if error:
                    raise RuntimeError(f"HTL refresh failed:\n{error}")
                chosen = ray.get(self.coordinator.latest_version.remote())
        else:
            chosen = None
        self.resumed_version = None
        chosen = _broadcast(chosen)
        if chosen != self.version or (chosen and not self.weights):
            ids, w = ray.get(self.coordinator.weights.remote(chosen))
            self.weights = dict(zip(ids.tolist(), w.tolist(), strict=True))
            self.checksum = weights_checksum(ids, w)
        self.version = chosen
        return time.time() - t0

    def refreshes_after(self, epoch: int) -> bool:
        """Whether rank 0 hands the coordinator a snapshot at the end of `epoch`."""
        return (epoch + 1) % self.cfg.htl.refresh_every == 0 \
            and epoch + 1 < self.cfg.train.epochs

    def catch_up(self, model: torch.nn.Module, epoch: int) -> None:
        """Rank 0, resumed from the checkpoint of `epoch`: the refresh due after it must exist.
        A restarted worker group finds it pending or done in the surviving coordinator; a
        restarted driver lost it with the old coordinator, so the restored model — the very
        snapshot — is submitted again. With synchronous refresh the next epoch then waits for
        it and trains with it, exactly as without the interruption."""
        import ray

        if not self.refreshes_after(epoch):
            return
        found = ray.get(self.coordinator.version_of_epoch.remote(epoch))
        if found is None:
            self.submit(model, epoch)
        else:
            self.pending = found
        if not self.cfg.htl.asynchronous:
            self.resumed_version = None

    def submit(self, model: torch.nn.Module, epoch: int) -> None:
        import ray

        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.pending = ray.get(self.coordinator.submit.remote([ray.put(state)], epoch))

    def batch_weights(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.weights.get(str(i), 1.0) for i in ids], dtype=np.float64)


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _say(message: str) -> None:
    """One line to the driver's console. Ray Train patches `print` in workers to log *and*,
    when MLflow has wrapped sys.stdout, to print as well — every line twice; writing to the
    process's own stdout bypasses the patch (Ray still forwards it to the driver)."""
    print(message, file=sys.__stdout__, flush=True)


def _quiet_ray_logs() -> None:
    """Ray Train logs every report at INFO (whole metric dicts); keep worker output readable."""
    import logging

    from ray.data import DataContext
    from ray.train.v2._internal.execution import context as v2_context

    logging.getLogger(v2_context.__file__).setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False


def _tracked(metrics: dict[str, Any]) -> dict[str, float]:
    """What goes to MLflow of an epoch's metrics (the epoch is the step)."""
    return {k: v for k, v in metrics.items() if k != "epoch"}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(loop_config["config"])
    tracking_uri: str = loop_config["tracking_uri"]
    mlflow_run_id: str = loop_config["mlflow_run_id"]
    fault_after_epoch: int | None = loop_config.get("fault_after_epoch")

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
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    objective = SETTINGS[cfg.supervision.setting](cfg)
    start_epoch, best, htl_version = 0, -math.inf, 0

    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as registered:
        resumed = resume_state(registered, loop_config["run_dir"])
    if resumed:
        directory, state = resumed
        objective.restore(state, model)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        htl_version = int(state.get("htl_version", 0))
        if rank == 0:
            _say(f"[htl-ray] resuming from checkpoint of epoch {state['epoch']} ({directory})")
    elif loop_config.get("init_checkpoint_file"):
        # model.init_checkpoint, pinned by the driver; never over a checkpoint of this run
        load_initial_weights(model, loop_config["init_checkpoint_file"])
    if rank == 0:
        _say(f"[htl-ray] workers compute on {place.describe()}")

    model = ray.train.torch.prepare_model(model)
    objective.attach(_unwrap(model))
    device = place.device
    train_shard = ray.train.get_dataset_shard("train")
    val_iter = ray.train.get_dataset_shard("val")
    htl = HtlState(cfg, loop_config.get("coordinator"), htl_version)
    if resumed and htl.enabled and rank == 0:
        htl.catch_up(objective.snapshot_model(_unwrap(model)), start_epoch - 1)
    # rank 0 writes to MLflow; kept on disk until the tracking server takes it
    outbox = TrackingOutbox(loop_config["run_dir"], tracking_uri, mlflow_run_id, "rank0", _say) \
        if rank == 0 else None
    if resumed and outbox is not None:
        # the resumed epoch's metrics again, with their first timestamp: stored once, and sent
        # if the previous worker group died between its checkpoint upload and its MLflow write
        meta = read_meta(directory)
        if "logged_at_ms" in meta:
            outbox.metrics(_tracked(meta["metrics"]), step=int(meta["epoch"]),
                           ts=meta["logged_at_ms"])
    attention = ATTENTION[cfg.htl.attention]

    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.time()
        wait_s = htl.adopt(rank) if htl.enabled else 0.0
        attend = htl.enabled and epoch >= cfg.htl.warmup_epochs and htl.version > 0
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + rank)
        rng = np.random.default_rng([cfg.run.seed, epoch, rank])
        losses, seen, attended = [], 0, 0
        # is the data path starving training? wait: blocked on the iterator (which decodes in
        # Ray Data's thread); prep: attention sampling, augmentation, placement in this loop
        data_wait = data_prep = 0.0
        t_next = time.perf_counter()
        for x, y, batch in iter_decoded(       # decoded while the previous step trains
                train_shard, batch_size=cfg.data.batch_size,
                local_shuffle_buffer_size=max(4 * cfg.data.batch_size, 64),
                local_shuffle_seed=cfg.run.seed * 7919 + epoch * 31 + rank):
            t_batch = time.perf_counter()
            data_wait += t_batch - t_next
            w_loss, idx = None, np.arange(len(batch["id"]))
            if attend:
                w = htl.batch_weights(batch["id"])
                attended += int((w > 1.0).sum())
                w_loss_np, w_sample = attention.split(w)
                idx = np.repeat(np.arange(len(w)), oversample_counts(w_sample, rng)) \
                    if cfg.htl.attention != "reweight" else np.arange(len(w))
                if len(idx) == 0:      # every rank must still step once per batch (DDP)
                    idx, w_loss_np = np.array([0]), np.zeros(len(w))
                x, y = x[idx], y[idx]
                w_loss = torch.as_tensor(w_loss_np[idx], dtype=torch.float32, device=device)
            # augmented where it trains: on a GPU, augmenting on the host bounded the step
            # (bench/gpu_throughput.py); on the CPU this order changes nothing
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, y = augment_batch(x, y, cfg.data.augment, gen)
            x = place.inputs(x)
            data_prep += time.perf_counter() - t_batch
            with place.autocast():
                per_sample = objective.per_sample_loss(model, x, y, batch, idx, epoch, gen)
            loss = weighted_mean(per_sample, w_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step(_unwrap(model))
            losses.append(float(loss.detach()) * len(x))
            seen += len(x)
            t_next = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        train_time = time.time() - t0

        local = evaluate(objective.eval_model(model), val_iter, cfg.data.val_batch_size, rank,
                         world, place)
        table = pd.concat(_gather(local), ignore_index=True).sort_values("id").reset_index(
            drop=True)
        loss_sum = _gather((sum(losses), seen))
        total_loss = sum(a for a, _ in loss_sum) / max(1, sum(b for _, b in loss_sum))
        checksums = _gather(state_checksum(_unwrap(model)))
        # the same values on every rank (gathered), so every rank stops here together, before
        # a checkpoint or an HTL refresh of weights that are no longer numbers (the last step
        # of an epoch can break the weights while its loss was still finite)
        if diverged("train/loss", total_loss, epoch, cfg, loop_config) \
                or diverged("weights (sum of |w|)", checksums[0], epoch, cfg, loop_config):
            return
        if htl.enabled and rank == 0 and htl.refreshes_after(epoch):
            htl.submit(objective.snapshot_model(_unwrap(model)), epoch)
        htl_sums = _gather(htl.checksum)
        metrics = {"epoch": epoch, "train/loss": total_loss,
                   "train/samples": float(sum(b for _, b in loss_sum)),
                   "time/train_epoch_s": train_time, "time/epoch_s": time.time() - t0,
                   # rank 0's: blocked on the Ray Data iterator; decoding + augmenting
                   "time/data_wait_s": data_wait, "time/data_prep_s": data_prep,
                   "lr": lr,
                   "weights_checksum": checksums[0],
                   "weights_checksum_max_abs_diff": float(max(checksums) - min(checksums))}
        if htl.enabled:
            attended_all = sum(_gather(attended))
            metrics.update({"htl/version_in_use": float(htl.version), "htl/wait_s": wait_s,
                            "htl/attention_active": float(attend),
                            "htl/weights_checksum": htl_sums[0],
                            "htl/weights_checksum_max_abs_diff": float(max(htl_sums)
                                                                       - min(htl_sums)),
                            "htl/attended_samples": float(attended_all)})
        metrics.update(split_metrics(table, "val"))
        best = max(best, metrics.get(cfg.train.checkpoint_metric, -math.inf))
        metrics["val/best_" + cfg.train.checkpoint_metric.split("/")[-1]] = best

        if rank == 0:
            logged_at = int(time.time() * 1000)
            _say(f"[htl-ray] epoch {epoch + 1}/{cfg.train.epochs} loss {total_loss:.4f} "
                 f"val dice {metrics['val/dice']:.4f} iou {metrics['val/iou']:.4f} "
                 f"thr-jaccard {metrics['val/thresholded_jaccard']:.4f} "
                 f"({metrics['time/epoch_s']:.1f}s)")
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, objective.eval_model(_unwrap(model)), optimizer, scheduler,
                                epoch, metrics,
                                extra={"htl_version": htl.version, "logged_at_ms": logged_at,
                                       "model_config": dataclasses.asdict(cfg.model),
                                       "input_size": loop_config.get("input_size"),
                                       "setting": cfg.supervision.setting},
                                extra_state=objective.checkpoint_state(_unwrap(model)))
                table.to_parquet(os.path.join(tmp, PER_SAMPLE_FILE), index=False)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            # only now, with the checkpoint in storage: if this worker group dies during the
            # upload, the resumed run trains this epoch again and MLflow holds it once. An
            # outage never stops training (the outbox keeps what it cannot send).
            outbox.metrics(_tracked(metrics), step=epoch, ts=logged_at)
        else:
            ray.train.report(metrics, checkpoint=None)

        if fault_after_epoch is not None and epoch == fault_after_epoch:
            # after the epoch is complete on every rank (rank 0's checkpoint uploaded and its
            # metrics tracked), as a crash between epochs would find it
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            raise InjectedFault(f"injected fault after epoch {epoch}")
