"""A checkpoint as a `ModelBundle`, and the run's MLflow Model.

`htl-ray train` logs every finished run's best checkpoint as an MLflow Model under `model/`
(htl_ray.mlflow_model), and `htl-ray predict` reads run and checkpoint directories through the
same functions, so a model has one description wherever it is stored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from htl_ray.checkpoints import load_checkpoint, model_config_of
from htl_ray.config import ConfigError
from htl_ray.inference import ModelBundle
from htl_ray.run_dir import CHECKPOINT_FILE, STATE_FILE, RunDir, read_meta

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"             # runs:/<run id>/model


def _run_state(run_dir: Path) -> dict[str, Any]:
    """The run's state for a model's identity; an unreadable one counts as none."""
    try:
        state = RunDir(run_dir).state()
    except (OSError, ValueError):
        return {}
    return state.to_json() if state else {}


def input_size_of(meta: dict[str, Any], state: dict[str, Any]) -> tuple[int, int]:
    """The training size: recorded in the checkpoint (or the run), else read from the run's
    dataset manifest (runs trained before it was recorded)."""
    size = meta.get("input_size") or state.get("input_size")
    if size:
        return int(size[0]), int(size[1])
    data = state.get("config", {}).get("data", {}).get("path")
    if data:
        from htl_ray.data.schema import read_manifest

        try:
            side = int(read_manifest(data)["params"]["size"])
            return side, side
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            pass
    raise ConfigError("MODEL: the checkpoint does not record the size it was trained at, and "
                      f"its run's dataset ({data or 'unknown'}) is not here to read it from")


def bundle_from_checkpoint(checkpoint_dir: Path) -> ModelBundle:
    """A checkpoint directory written by `htl-ray train` as a ModelBundle."""
    meta = read_meta(checkpoint_dir)
    state = _run_state(checkpoint_dir.parent)
    try:
        weights = load_checkpoint(checkpoint_dir)["model"]
    except Exception as exc:  # noqa: BLE001 - truncated, empty or foreign file
        raise ConfigError(f"MODEL: {checkpoint_dir / CHECKPOINT_FILE} is not a loadable "
                          f"checkpoint ({type(exc).__name__}: {exc})") from None
    return ModelBundle(
        state=weights, model_config=model_config_of(checkpoint_dir, meta),
        input_size=input_size_of(meta, state),
        identity={"mlflow_run_id": state.get("mlflow_run_id"),
                  "checkpoint_epoch": meta.get("epoch"),
                  "dataset_fingerprint": state.get("dataset_fingerprint"),
                  "checkpoint": str(checkpoint_dir.resolve())})


def checkpoint_of(path: Path) -> Path:
    """A run directory → its best checkpoint; a checkpoint directory or file → its directory."""
    if path.is_file() and path.name == CHECKPOINT_FILE:
        return path.parent
    if (path / CHECKPOINT_FILE).is_file():
        return path
    if RunDir(path).has_state():
        best = RunDir(path).best_checkpoint()
        if best is None:
            raise ConfigError(f"MODEL: run directory {path} holds no checkpoint yet")
        return best[0]
    raise ConfigError(f"MODEL: {path} is neither a run directory ({STATE_FILE}), a "
                      f"checkpoint directory ({CHECKPOINT_FILE}) nor an MLflow Model (MLmodel)")


def save_run_model(run_dir: Path, checkpoint_dir: Path) -> Path:
    """Write the MLflow Model of `checkpoint_dir` into RUN_DIR/mlflow_model (replacing an older
    one) and return it; the caller logs it as the run's `model/` artifacts."""
    import shutil

    from htl_ray.mlflow_model import save_mlflow_model

    dest = RunDir(run_dir).model_dir
    if dest.exists():
        shutil.rmtree(dest)
    return save_mlflow_model(bundle_from_checkpoint(checkpoint_dir), dest)


def register_run(run_dir: str | Path, name: str, *, tracking_uri: str | None = None
                 ) -> tuple[str, str]:
    """Register RUN_DIR's MLflow Model (`runs:/<id>/model`) in the model registry under
    `name` (in `tracking_uri`, default the run's own store); a run that finished before runs
    logged their model gets it logged first. Returns (name, version)."""
    from mlflow.exceptions import MlflowException

    from htl_ray.tracking import absolute_uri, check_reachable, redact
    from htl_ray.tracking import client as tracking_client

    run_dir = Path(run_dir).resolve()
    state = RunDir(run_dir).require_state("register:")
    if not state.mlflow_run_id:
        raise ConfigError(f"register: {RunDir(run_dir).state_file}: records no MLflow run "
                          "(mlflow_run_id); was the run started by `htl-ray train`?")
    uri = absolute_uri(tracking_uri) if tracking_uri else state.tracking_uri
    run_id = state.mlflow_run_id
    check_reachable(uri, existing=True, key="--tracking-uri" if tracking_uri else
                    f"the run's tracking URI (in {RunDir(run_dir).state_file})")
    client = tracking_client(uri)      # no global MLflow state (see predict)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"register: MLflow run {run_id} of {run_dir} is not in {redact(uri)} "
                          f"({exc.message.splitlines()[0][:200]}); was the store moved? Give "
                          "it with --tracking-uri") from None
    try:
        logged = {a.path for a in client.list_artifacts(run_id, MODEL_ARTIFACT)}
        if f"{MODEL_ARTIFACT}/MLmodel" not in logged:
            best = RunDir(run_dir).best_checkpoint()
            if best is None:
                raise ConfigError(f"register: {run_dir} holds no checkpoint")
            logger.info(f"[htl-ray] the run has no logged MLflow Model yet: logging the one of its "
                        f"best checkpoint ({best[0].name})")
            client.log_artifacts(run_id, str(save_run_model(run_dir, best[0])), MODEL_ARTIFACT)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        same = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if same:
            version = max(same, key=lambda v: int(v.version))
            logger.info(f"[htl-ray] runs:/{run_id}/{MODEL_ARTIFACT} is already registered as "
                        f"models:/{name}/{version.version}; no new version made")
            return name, str(version.version)
        version = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id)
    except MlflowException as exc:
        raise ConfigError(f"register {name!r}: MLflow at {redact(uri)} refused: "
                          f"{exc.message.splitlines()[0][:300]}") from None
    logger.info(f"[htl-ray] registered runs:/{run_id}/{MODEL_ARTIFACT} as models:/{name}/"
                f"{version.version} in {redact(uri)}")
    return name, str(version.version)
