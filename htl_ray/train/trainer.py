"""Assemble and run one training run: pre-flight checks, Ray Datasets, TorchTrainer, MLflow.

The run directory is `run.storage_path/run.name`. It holds Ray Train's checkpoints and
`htl_run.json` (the MLflow run id and the config), so `--resume RUN_DIR` continues the same
run, from its latest checkpoint, into the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htl_ray.cluster import join_cluster, uses_refresh
from htl_ray.config import ConfigError, ExperimentConfig, dump_config, from_dict
from htl_ray.data.loading import TRAIN_COLUMNS, split_dataset
from htl_ray.run_dir import CHECKPOINT_FILE, META_FILE, PER_SAMPLE_FILE, RunDir, RunState
from htl_ray.supervision import SETTINGS
from htl_ray.tracking.schema import (
    BEST_CHECKPOINT_TAG,
    BEST_EPOCH_TAG,
    DATASET_TAG,
    EXTERNAL_TAG_PREFIX,
    GIT_COMMIT_TAG,
    INIT_CHECKPOINT_TAG,
    METHOD_TAG,
    RESUMED_COMMIT_PREFIX,
    RUN_DIR_TAG,
    SETTING_TAG,
    VERSION_TAG_PREFIX,
)
from htl_ray.train.evaluation import (
    TEST_SPLIT,
    VAL_META_COLUMNS,
    evaluate_checkpoint,
    per_sample_file,
)
from htl_ray.train.loop import NonFiniteTraining, train_loop_per_worker
from htl_ray.train.model_bundle import MODEL_ARTIFACT, save_run_model
from htl_ray.train.preflight import preflight

logger = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    best_checkpoint: Path | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    tracking_pending: int = 0      # MLflow writes still waiting in RUN_DIR/mlflow_outbox
    test_metrics: dict[str, float] = field(default_factory=dict)   # test/*, best checkpoint


def run_dir_of(cfg: ExperimentConfig) -> Path:
    return (Path(cfg.run.storage_path) / cfg.run.name).resolve()


# config paths a run records; a relative one is resolved against the run directory's origin
PATH_KEYS = (("data", "path"), ("model", "init_checkpoint"))
LOCATION_KEYS = ("run.name", "run.storage_path")


def _state_config(cfg: ExperimentConfig, run_dir: Path, uri: str) -> dict[str, Any]:
    """The config as the run directory keeps it: every path absolute, so that resuming it from
    any working directory, or after moving it, finds the same dataset and tracking store."""
    raw = cfg.to_dict()
    raw["run"]["storage_path"] = str(run_dir.parent)
    for section, key in PATH_KEYS:
        if raw[section].get(key):
            raw[section][key] = str(Path(raw[section][key]).resolve())
    raw["tracking"]["uri"] = uri
    return raw


def _origin(run_dir: Path, storage_path: str, name: str) -> Path | None:
    """The folder a run's relative paths were given against (runs older than absolute run
    state): the run directory minus its relative `run.storage_path` and `run.name`; None when
    that cannot be told (a storage path with '..')."""
    storage = Path(storage_path)
    if storage.is_absolute():
        return storage
    if ".." in storage.parts or ".." in Path(name).parts:
        return None
    depth = len([p for p in storage.parts if p != "."]) + len(Path(name).parts) - 1
    return run_dir.parents[depth] if depth < len(run_dir.parents) else None


def config_for_resume(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run was started with, located at `run_dir` wherever it now is (its name and
    storage path come from the directory given, never from the working directory), its
    relative paths resolved against it, its tracking store the one it recorded; with optional
    overrides (not of its location)."""
    import copy

    from htl_ray.config import apply_overrides, parse_override
    from htl_ray.tracking import absolute_uri, sqlite_path

    run_dir = Path(run_dir).absolute()
    state = RunDir(run_dir).require_state("--resume")
    moved = [k for k, _ in map(parse_override, overrides or []) if k in LOCATION_KEYS]
    if moved:
        raise ConfigError(f"{moved[0]}: a resumed run stays in the directory given to --resume "
                          f"({run_dir}); move or copy that directory instead")
    raw = copy.deepcopy(state.config)
    run = raw.get("run", {})
    origin = _origin(run_dir, str(run.get("storage_path", ".")), str(run.get("name", "")))
    given = dict(map(parse_override, overrides or []))

    def against_origin(key: str, value: str) -> str:
        if origin is None:
            raise ConfigError(f"--resume: this run (from an older htl-ray) recorded {key} "
                              f"{value!r} relative to a working directory that cannot be told "
                              f"from {run_dir}; give it again, absolute: {key}=/path")
        return os.path.normpath(origin / value)

    for section, key in PATH_KEYS:
        value = raw.get(section, {}).get(key)
        if value and not Path(value).is_absolute() and f"{section}.{key}" not in given:
            raw[section][key] = against_origin(f"{section}.{key}", value)
    uri = state.tracking_uri or raw.get("tracking", {}).get("uri")
    db = sqlite_path(uri) if uri else None
    if db is not None and not db.is_absolute() and "tracking.uri" not in given:
        uri = absolute_uri(f"sqlite:///{against_origin('tracking.uri', str(db))}")
    raw.setdefault("tracking", {})["uri"] = uri
    raw.setdefault("run", {}).update(storage_path=str(run_dir.parent), name=run_dir.name)
    return from_dict(apply_overrides(raw, overrides or []))


def describe_resume(run_dir: Path, state: RunState, uri: str, run_id: str, *,
                    epochs: int) -> list[str]:
    """What `--resume` continues, said before anything trains: the directory, the epoch it
    starts from, the MLflow run, and whether the directory moved (or is a copy)."""
    from htl_ray.tracking import redact
    found = RunDir(run_dir).checkpoints()
    epoch = int(found[0][0]["epoch"]) if found else None
    lines = [f"[htl-ray] resuming run {run_dir}: "
             + (f"from the checkpoint of epoch {epoch} (epoch {epoch + 2} of "
                f"{epochs} next)" if epoch is not None
                else "no checkpoint yet, so from epoch 1")
             + f"; MLflow run {run_id} in {redact(uri)}"]
    was = state.run_dir
    if was and Path(was) != run_dir:
        try:
            original = RunDir(was).state()
        except ValueError:
            original = None
        copy = original is not None and original.mlflow_run_id == run_id
        lines.append(f"[htl-ray] this run was started in {was} and is now in {run_dir}: it "
                     "continues here" + (f" ({was} still exists: this is a copy, and both log "
                                          f"to MLflow run {run_id})" if copy else ""))
    return lines


def start_coordinator(cfg: ExperimentConfig, run_dir: Path, train_ds, *, uri: str,
                      run_id: str, delay_s: float = 0.0):
    import ray

    from htl_ray.htl.coordinator import RefreshCoordinator, spec_from_config

    # restarted in place if its process dies: the constructor reloads every persisted version
    # (and the PIE snapshots), and calls made meanwhile are retried, so training goes on. The
    # caller keeps `train_ds` referenced for the run: the actor only borrows its blocks, and a
    # restarted actor reads them again
    actor = ray.remote(num_cpus=0, max_concurrency=8, max_restarts=-1,
                       max_task_retries=-1)(RefreshCoordinator)
    return actor.remote(str(run_dir), train_ds, spec_from_config(cfg),
                        dataclasses.asdict(cfg.htl), cfg.run.seed, uri, run_id, delay_s)


def run_training(cfg: ExperimentConfig, *, resume: bool = False,
                 fault_after_epoch: int | None = None, refresh_delay_s: float = 0.0,
                 tags: dict[str, str] | None = None, callbacks: list | None = None,
                 log_model: bool = True) -> TrainingOutcome:
    """Train `cfg` with Ray Train; returns where the results are. Raises on failure (the MLflow
    run is then marked FAILED and the checkpoints already written stay in the run directory).

    `tags` go on a new MLflow run (a sweep links its trials to the parent run this way);
    `callbacks` are Ray Train callbacks (a Tune trial passes its report callback);
    `log_model`: log the best checkpoint as an MLflow Model (a sweep's trials do not: they are
    candidates, and the confirmation runs of the chosen one do)."""
    import ray.train

    from htl_ray import tracking
    from htl_ray.interrupts import restore_ctrl_c

    manifest = preflight(cfg)
    run_dir = run_dir_of(cfg)
    state = RunDir(run_dir).state()
    if state and not resume:
        raise ConfigError(f"run.name: run directory {run_dir} already holds a run; resume it "
                          f"with `htl-ray train --resume {run_dir}` or choose another run.name")
    init_file = state.init_checkpoint_file if state else None
    if cfg.model.init_checkpoint and not state:
        from htl_ray.models import create_model, initial_checkpoint_file, load_initial_weights

        # pinned to one file now (a run directory's best checkpoint may change later) and
        # checked here, naming the file, rather than in every worker after Ray has started;
        # absolute, since workers need not share the driver's working directory
        cfg.model.init_checkpoint = str(Path(cfg.model.init_checkpoint).resolve())
        init_file = str(initial_checkpoint_file(cfg.model.init_checkpoint))
        load_initial_weights(create_model(cfg.model), init_file)
        logger.info(f"[htl-ray] model starts from the weights in {init_file}")
    if resume and state and state.tracking_uri:
        uri = tracking.absolute_uri(cfg.tracking.uri or state.tracking_uri)  # the run's store
    else:
        uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    join_cluster(cfg, uri)          # may refuse the run: before an MLflow run exists
    flat = cfg.flat()
    fingerprint = manifest.get("fingerprint", "unknown")
    size = manifest.get("params", {}).get("size")
    input_size = [int(size), int(size)] if size else None      # what predict resizes to
    if resume and state and state.mlflow_run_id:
        run_id = state.mlflow_run_id
        from htl_ray.tracking import client as tracking_client
        from htl_ray.tracking.outbox import flush_run

        flush_run(run_dir, uri, run_id)   # writes an outage kept back, its end included
        tracking_client(uri).update_run(run_id, status="RUNNING")
        # the code that trains from here on: a resumed run may run other code than it began with
        tracking.set_tags(uri, run_id, {f"{RESUMED_COMMIT_PREFIX}{int(time.time())}":
                                        tracking.git_commit()})
        for line in describe_resume(run_dir, state, uri, run_id, epochs=cfg.train.epochs):
            logger.info(line)
    else:
        tags = {GIT_COMMIT_TAG: tracking.git_commit(), DATASET_TAG: fingerprint,
                RUN_DIR_TAG: str(run_dir), SETTING_TAG: cfg.supervision.setting,
                METHOD_TAG: cfg.htl.method, **(tags or {})}
        if init_file:
            tags[INIT_CHECKPOINT_TAG] = init_file
        tags.update({f"{VERSION_TAG_PREFIX}{k}": v for k, v in tracking.package_versions().items()})
        display_name = tags.pop("mlflow.runName", cfg.run.name)
        run_id = tracking.start_run(uri, cfg.tracking.experiment, display_name, flat, tags)
    where = RunDir(run_dir)
    where.write_state(RunState(mlflow_run_id=run_id, tracking_uri=uri, run_dir=str(run_dir),
                               config=_state_config(cfg, run_dir, uri),
                               dataset_fingerprint=fingerprint, init_checkpoint_file=init_file,
                               input_size=input_size))
    where.diverged_file.unlink(missing_ok=True)          # a resumed run tries again
    dump_config(cfg, where.config_file)

    try:
        t0 = time.time()
        train_ds = split_dataset(cfg.data.path, "train", limit=cfg.data.limit_train)
        setting = SETTINGS[cfg.supervision.setting]
        score_ds = setting.prepare_train(cfg, train_ds)
        train_ds = setting.epoch_rows(cfg, score_ds)
        val_ds = split_dataset(cfg.data.path, "val", columns=TRAIN_COLUMNS + VAL_META_COLUMNS)
        logger.info(f"[htl-ray] data: {train_ds.count()} train / {val_ds.count()} val rows "
                    f"({time.time() - t0:.1f}s); {setting.describe(cfg)}; "
                    f"{cfg.scaling.num_workers} workers; MLflow {tracking.redact(uri)} run "
                    f"{run_id}")
        coordinator = None
        if uses_refresh(cfg):
            coordinator = start_coordinator(cfg, run_dir, score_ds, uri=uri, run_id=run_id,
                                            delay_s=refresh_delay_s)
            logger.info(f"[htl-ray] HTL: method {cfg.htl.method}, {cfg.htl.attention} "
                        f"({cfg.htl.weighting}, λ={cfg.htl.lam}, q={cfg.htl.q}), refresh every "
                        f"{cfg.htl.refresh_every} epochs "
                        f"({'async' if cfg.htl.asynchronous else 'sync'}), "
                        f"sparsities {cfg.htl.sparsities}")
        trainer = interruptible_trainer()(
            train_loop_per_worker,
            train_loop_config={"config": cfg.to_dict(), "tracking_uri": uri,
                               "mlflow_run_id": run_id, "fault_after_epoch": fault_after_epoch,
                               "run_dir": str(run_dir), "init_checkpoint_file": init_file,
                               "input_size": input_size,
                               "coordinator": coordinator},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                resources_per_worker=dict(cfg.scaling.resources_per_worker)),
            run_config=ray.train.RunConfig(
                name=cfg.run.name, storage_path=str(run_dir.parent),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=cfg.train.keep_checkpoints,
                    checkpoint_score_attribute=cfg.train.checkpoint_metric,
                    checkpoint_score_order="max"),
                failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                callbacks=callbacks or None),
            datasets={"train": train_ds, "val": val_ds},
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        )
        try:
            result = trainer.fit()
        finally:
            restore_ctrl_c()
            if coordinator is not None:
                import ray

                try:
                    ray.get(coordinator.drain.remote())
                finally:
                    ray.kill(coordinator)
        if result.error:
            raise _user_cause(result.error) or result.error
        if where.diverged_file.is_file():
            note = json.loads(where.diverged_file.read_text())
            raise NonFiniteTraining(note["message"])
        best = where.best_checkpoint(cfg.train.checkpoint_metric)
        best_ckpt, best_metrics = best if best is not None else (None, {})
        test_metrics = {}
        if cfg.train.evaluate_test and best_ckpt is not None \
                and manifest.get("split_counts", {}).get(TEST_SPLIT):
            test_metrics = held_out_metrics(best_ckpt, cfg)
    except BaseException:
        # the FAILED mark waits in the outbox if the tracking server is down: it must not
        # replace the error the user needs to see
        finish_tracking(run_dir, uri, run_id, "FAILED")
        raise

    pending = finish_tracking(run_dir, uri, run_id, "FINISHED", best=best,
                              test_metrics=test_metrics, log_model=log_model)
    return TrainingOutcome(run_dir=run_dir, mlflow_run_id=run_id, tracking_uri=uri,
                           metrics=dict(result.metrics or {}), best_checkpoint=best_ckpt,
                           best_metrics=dict(best_metrics), tracking_pending=pending,
                           test_metrics=test_metrics)


def interruptible_trainer() -> type:
    """Ray's TorchTrainer with Ctrl-C as an interrupt: it aborts the run as Ray Train's own
    handler does, then raises KeyboardInterrupt (`interrupts.interrupt_after`) where Ray's
    would end the process with exit status 1 and no word — so the run is marked FAILED, its
    checkpoints kept, and the command says how to go on (exit 130)."""
    import ray
    from ray.train.torch import TorchTrainer

    from htl_ray.interrupts import interrupt_after

    class InterruptibleTorchTrainer(TorchTrainer):
        def _register_sigint_handler(self, controller) -> None:
            signal.signal(signal.SIGINT, interrupt_after(
                lambda: ray.get(controller.abort.remote(), timeout=60)))

    return InterruptibleTorchTrainer


def _user_cause(error: BaseException) -> BaseException | None:
    """The user-fixable error (e.g. a diverged loss) behind Ray Train's worker-group failure,
    so it reaches the command line as itself rather than as Ray's wrapper."""
    from htl_ray.errors import UserError, find_user_error

    found = find_user_error(error)
    return found if isinstance(found, UserError) else None


def held_out_metrics(best_ckpt: Path, cfg: ExperimentConfig) -> dict[str, float]:
    """The best checkpoint on the test split; a failure here is reported, not raised: the
    trained run and its checkpoints are complete, and `htl-ray evaluate RUN_DIR` can retry."""
    t0 = time.time()
    try:
        metrics, table = evaluate_checkpoint(best_ckpt, cfg, TEST_SPLIT)
    except Exception as exc:  # noqa: BLE001 - the run's results must still be tracked
        logger.warning(f"[htl-ray] warning: test-split evaluation of {best_ckpt} failed "
                       f"({exc}); the run is kept; retry with "
                       f"`htl-ray evaluate {best_ckpt.parent}`")
        return {}
    logger.info(_split_line(TEST_SPLIT, metrics, len(table), best_ckpt, time.time() - t0))
    return metrics


def _split_line(split: str, metrics: dict[str, float], images: int, checkpoint: Path,
                seconds: float) -> str:
    line = (f"[htl-ray] {split} ({images} images), best checkpoint {checkpoint.name}: "
            f"dice {metrics[f'{split}/dice']:.4f} iou {metrics[f'{split}/iou']:.4f} "
            f"thr-jaccard {metrics[f'{split}/thresholded_jaccard']:.4f}")
    if f"{split}/original/dice" in metrics:
        line += (f"; at original resolution dice {metrics[f'{split}/original/dice']:.4f} "
                 f"thr-jaccard {metrics[f'{split}/original/thresholded_jaccard']:.4f}")
    return line + f" ({seconds:.1f}s)"


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def external_name(data: str | Path, name: str | None) -> str:
    """The site name of `evaluate --data`: --name, else the dataset folder's name."""
    site = name or Path(data).resolve().name
    if not SITE_NAME.fullmatch(site):
        raise ConfigError(f"--name {site!r}: a site name is letters, digits, '_', '.', '-' "
                          "(it becomes part of MLflow metric names: external/<name>/dice)")
    return site


def evaluate_run(run_dir: str | Path, split: str = TEST_SPLIT, *,
                 data: str | Path | None = None, name: str | None = None) -> dict[str, float]:
    """`htl-ray evaluate RUN_DIR`: a finished run's best checkpoint on `split` of its own
    dataset, logged to its MLflow run as `best/<split>/*` (for runs trained with
    train.evaluate_test off, or before it existed) — or on `split` of another dataset `data`
    (external validation), logged as `external/<name>/*`; with the per-image table. Kept in the
    outbox if MLflow is down."""
    from htl_ray.tracking.outbox import TrackingOutbox, flush_run

    run_dir = Path(run_dir).resolve()
    state = RunDir(run_dir).require_state("evaluate:")
    cfg = from_dict(state.config)
    if name is not None and data is None:
        raise ConfigError("--name names the site of --data; give the dataset with --data")
    site = None
    if data is not None:
        site = external_name(data, name)
        if split != TEST_SPLIT:            # a site's val and test must not overwrite each other
            site = f"{site}_{split}"
        _check_external(Path(data), split, run_dir, state)
    best = RunDir(run_dir).best_checkpoint()
    if best is None:
        raise ConfigError(f"evaluate: {run_dir} holds no checkpoint to evaluate")
    from htl_ray.cluster import init_ray

    init_ray()
    t0 = time.time()
    metrics, table = evaluate_checkpoint(best[0], cfg, split, data=data, name=site)
    uri, run_id = RunDir(run_dir).mlflow_run("evaluate:")
    box = TrackingOutbox(run_dir, uri, run_id, "driver", send_each=False)
    prefix = "" if data is not None else "best/"
    box.metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=0)
    shown = f"external/{site}" if site else split
    box.artifact(best[0] / per_sample_file(shown), "evaluation")
    if site:
        from htl_ray.data.schema import read_manifest

        box.tags({f"{EXTERNAL_TAG_PREFIX}{site}.dataset": str(Path(data).resolve()),
                  f"{EXTERNAL_TAG_PREFIX}{site}.split": split,
                  f"{EXTERNAL_TAG_PREFIX}{site}.fingerprint":
                      read_manifest(data).get("fingerprint")})
    left = sum(flush_run(run_dir, uri, run_id).values())
    logger.info(_split_line(shown, metrics, len(table), best[0], time.time() - t0)
                + (f"; {left} MLflow write(s) pending: htl-ray sync {run_dir}" if left else ""))
    if f"{shown}/original/dice" not in metrics:
        logger.info(f"[htl-ray] note: {data or cfg.data.path} keeps no original-size masks "
                    "(ingested before records schema 2), so these are training-resolution "
                    "metrics only; ingest it again for original-resolution ones (what the ISIC "
                    "challenge scores)")
    return metrics


def refuse_shared_images(data: Path, training: str | Path, *, key: str, trained_by: str,
                         split: str = "test") -> None:
    """An external dataset's `split` must hold no image of `training`'s train or val split
    (`data.overlap`): refused when pixels match, a warning when only ids do (ids may collide
    between sites)."""
    from htl_ray.data.overlap import TRAINED_ON, shared_images

    found = shared_images(data, training, split=split)
    if found is None:
        return
    where = f"the {' or '.join(TRAINED_ON)} split of {training} ({trained_by})"
    if found.same_pixels:
        raise ConfigError(
            f"{key} {data}: {found.same_pixels} of its {found.total} {split} images are also "
            f"in {where}, which trains and chooses the model, so scored there it says nothing "
            "about another site; ingest the training data without them (`htl-ray data ingest "
            "... --drop KEY=PATTERN`) or score on another dataset")
    if found.same_id_only:
        logger.warning(f"[htl-ray] warning: {key} {data}: {found.same_id_only} of its "
                       f"{found.total} {split} images have the id of an image in {where} "
                       "(other pixels: another size, or another site's same name); if they "
                       "are the same images, this is not an external test")


def _check_external(data: Path, split: str, run_dir: Path, state: RunState) -> None:
    """An external dataset must exist, hold the split, be stored at the training size, and
    share no image with what the run trained on (`refuse_shared_images`)."""
    from htl_ray.data.schema import read_manifest
    from htl_ray.train.model_bundle import input_size_of

    try:
        manifest = read_manifest(data)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"--data: {exc} (ingest it with `htl-ray data ingest ... "
                          "--all-test`)") from None
    if not manifest.get("split_counts", {}).get(split):
        raise ConfigError(f"--data: {data} has no rows in the {split!r} split (split counts "
                          f"{manifest.get('split_counts')}); choose it with --split")
    size = manifest.get("params", {}).get("size")
    own = input_size_of({}, state.to_json())
    if size is not None and [size, size] != list(own):
        raise ConfigError(f"--data: {data} is stored at {size}x{size}, the run trained at "
                          f"{own[0]}x{own[1]}; ingest it again with --size {own[0]}")
    refuse_shared_images(data, from_dict(state.config).data.path, key="--data",
                         trained_by=f"run {run_dir.name}", split=split)


def _saved_model(run_dir: Path, checkpoint: Path) -> Path | None:
    """The run's MLflow Model folder; a failure to build it is reported, not raised: the run
    and its checkpoints are complete, and `htl-ray register` builds it again."""
    try:
        return save_run_model(run_dir, checkpoint)
    except Exception as exc:  # noqa: BLE001 - the run's results must still be tracked
        logger.warning(f"[htl-ray] warning: could not write the MLflow Model of {checkpoint} "
                       f"({type(exc).__name__}: {exc}); `htl-ray register {run_dir} NAME` "
                       "tries again")
        return None


def finish_tracking(run_dir: Path, uri: str, run_id: str, status: str, *,
                    best: tuple[Path, dict[str, float]] | None = None,
                    test_metrics: dict[str, float] | None = None,
                    log_model: bool = True) -> int:
    """End a run in MLflow: the writes rank 0 and the coordinator could not send, then (a
    finished run) the best checkpoint `best` = (directory, metrics) — its metrics as
    `best/val/*` (and `test_metrics` as `best/test/*`), its files as artifacts, its epoch as a
    tag — then the status. Returns the
    writes still pending (the server is down: they wait in RUN_DIR/mlflow_outbox for
    `htl-ray sync RUN_DIR`)."""
    from htl_ray.tracking.outbox import TrackingOutbox, flush_run

    # kept only: flush_run sends them after the other writers', the end last
    box = TrackingOutbox(run_dir, uri, run_id, "driver", send_each=False)
    if status == "FINISHED":
        best_ckpt, best_metrics = best if best is not None else (None, {})
        # the best epoch's validation metrics beside the per-epoch history: what comparisons use
        box.metrics({f"best/{k}": v for k, v in best_metrics.items() if k.startswith("val/")}
                    | {f"best/{k}": v for k, v in (test_metrics or {}).items()}, step=0)
        box.artifact(RunDir(run_dir).config_file)
        for name, dest in ((CHECKPOINT_FILE, "best_checkpoint"), (META_FILE, "best_checkpoint"),
                           (PER_SAMPLE_FILE, "evaluation"),
                           (per_sample_file(TEST_SPLIT), "evaluation")):
            if best_ckpt is not None and (best_ckpt / name).is_file():
                box.artifact(best_ckpt / name, dest)
        epoch = best_metrics.get("epoch")
        box.tags({BEST_CHECKPOINT_TAG: str(best_ckpt),
                  BEST_EPOCH_TAG: "none" if epoch is None else str(int(epoch))})
        if best_ckpt is not None and log_model:
            model_dir = _saved_model(run_dir, best_ckpt)
            if model_dir is not None:
                box.artifact(model_dir, MODEL_ARTIFACT)
    box.end(status)
    left = flush_run(run_dir, uri, run_id)
    pending = sum(left.values())
    if pending:
        logger.warning(f"[htl-ray] warning: the run is over ({status}) but MLflow has not "
                       f"taken {pending} write(s) (metrics, artifacts, the end of the run); "
                       f"they are kept in {RunDir(run_dir).outbox_dir}. Send them when the "
                       f"server is back: htl-ray sync {run_dir}")
    return pending
