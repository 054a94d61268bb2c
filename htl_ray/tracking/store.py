"""MLflow helpers: one tracking URI rule, one run per training run, metrics in batches.

Rule for the URI: `MLFLOW_TRACKING_URI` wins, then `tracking.uri` from the config, then
`sqlite:///mlflow.db` in the working directory. Relative SQLite paths are made absolute so that
Ray workers (whose working directory may differ) write to the same store as the driver, and the
artifact root of a SQLite store is kept beside the database file.
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from htl_ray.redact import USERINFO, redact

DEFAULT_URI = "sqlite:///mlflow.db"
_SQLITE = "sqlite:///"


def client(uri: str) -> MlflowClient:
    """The one way htl-ray talks to a tracking store: a client of `uri` whose model registry is
    the same store. Never `mlflow.set_tracking_uri`, which would also set the process's
    MLFLOW_TRACKING_URI, so that every later run of the process went there."""
    return MlflowClient(uri, registry_uri=uri)


def resolve_tracking_uri(configured: str | None = None) -> str:
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI)


def uri_key(given: str | None) -> str:
    """What a user would fix when the tracking URI of a command is wrong: its option, the
    environment variable, or the default."""
    if given:
        return "--tracking-uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else \
        f"tracking URI (default {DEFAULT_URI})"


def absolute_uri(uri: str) -> str:
    """A relative SQLite path made absolute (against the working directory); others as given."""
    if uri.startswith(_SQLITE):
        path = uri[len(_SQLITE):]
        if not path.startswith("/"):
            uri = _SQLITE + str((Path.cwd() / path).resolve())
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0, *, existing: bool = False,
                    key: str = "tracking.uri") -> None:
    """Fail in seconds, before anything starts, when the tracking store cannot be reached: an
    MLflow client would otherwise retry with back-off for minutes and then fail mid-start.
    HTTP(S) servers must answer `/health`; a SQLite store's folder must exist — and with
    `existing` (reading a model from it), the store itself, rather than a new empty one."""
    import urllib.error
    import urllib.request

    from htl_ray.config import ConfigError

    db = sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise ConfigError(f"{key}: the folder of the SQLite store {db} does not exist")
        if existing and not db.is_file():
            raise ConfigError(f"{key}: no MLflow store at {uri} (no file {db}); give the "
                              "store that holds the runs with --tracking-uri")
        return
    if not uri.startswith(("http://", "https://")):
        return                               # databricks, file:, ...: MLflow checks those
    url = USERINFO.sub(lambda m: m["scheme"], uri).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status >= 400:
                raise OSError(f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return                           # it answers; credentials are MLflow's business
        raise ConfigError(f"{key}: MLflow server {redact(uri)} answered /health with "
                          f"HTTP {exc.code}; is it an MLflow tracking server?") from None
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"{key}: MLflow server {redact(uri)} is not reachable within {timeout_s:g} s "
            f"({reason}); start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix "
            f"{key} / MLFLOW_TRACKING_URI, or use a local store: sqlite:///mlflow.db") from None


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len(_SQLITE):]) if uri.startswith(_SQLITE) else None


def get_or_create_experiment(store: MlflowClient, name: str, uri: str) -> str:
    exp = store.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "mlartifacts").as_uri() if db else None
    return store.create_experiment(name, artifact_location=location)


def git_commit(here: Path | None = None) -> str:
    """Commit of the checkout the package is imported from (or 'unknown' outside git), with
    `+dirty` when the package's files differ from it: a result must not be credited to a
    commit whose code did not produce it."""
    here = here or Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
    except Exception:
        return "unknown"
    try:
        changed = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here,
                                 capture_output=True, text=True, timeout=5,
                                 check=True).stdout.strip()
    except Exception:
        return commit
    return commit + ("+dirty" if changed else "")


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("htl-ray", "torch", "torchvision", "ray", "segmentation-models-pytorch",
                "mlflow", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, str]) -> str:
    """Create an MLflow run (status RUNNING) with params and tags; return its id."""
    store = client(uri)
    exp_id = get_or_create_experiment(store, experiment, uri)
    run = store.create_run(exp_id, run_name=run_name,
                            tags={k: redact(str(v)) for k, v in tags.items()})
    items = [Param(k, redact(str(v))[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        store.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    store = client(uri)
    import time

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if v is not None and v == v]
    for i in range(0, len(items), 500):
        store.log_batch(run_id, metrics=items[i:i + 500])


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    client(uri).log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None):
    client(uri).log_artifact(run_id, str(path), artifact_path)


def log_artifacts(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None):
    client(uri).log_artifacts(run_id, str(path), artifact_path)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def run_status(uri: str, run_id: str) -> str:
    return client(uri).get_run(run_id).info.status
