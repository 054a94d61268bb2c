"""Where a trained model comes from: a run directory, a checkpoint, or an MLflow Model URI.

Every form resolves to one `ModelBundle` (weights, architecture, training size, identity), so
`htl-ray predict` treats them alike and its table names the model it used.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from htl_ray.config import ConfigError
from htl_ray.errors import UserError
from htl_ray.inference import BUNDLE_ARTIFACT, ModelBundle
from htl_ray.train.model_bundle import bundle_from_checkpoint, checkpoint_of

MLFLOW_SCHEMES = ("runs:/", "models:/")


def bundle_from_mlflow(uri: str, tracking_uri: str | None = None) -> ModelBundle:
    """An MLflow Model logged by `htl-ray train` (`runs:/<id>/model`, `models:/<name>/<v>`)."""
    import mlflow

    from htl_ray.tracking import (
        absolute_uri,
        check_reachable,
        redact,
        resolve_tracking_uri,
        uri_key,
    )

    # an explicit --tracking-uri wins over MLFLOW_TRACKING_URI
    tracking = absolute_uri(tracking_uri) if tracking_uri else resolve_tracking_uri()
    check_reachable(tracking, existing=True, key=uri_key(tracking_uri))
    with tempfile.TemporaryDirectory(prefix="htl-ray-model-") as dest:
        try:
            # the URIs as arguments, never mlflow.set_tracking_uri: it also sets the process's
            # MLFLOW_TRACKING_URI, and every later run of this process would go there
            source = registered_source(uri, tracking) if uri.startswith("models:/") else uri
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dest,
                                                       tracking_uri=tracking)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad URI
            first = (str(exc).splitlines() or [""])[0][:300]
            raise ConfigError(f"MODEL: {uri} not found in {redact(tracking)} "
                              f"({type(exc).__name__}: {first})") from None
        return bundle_from_model_dir(Path(local), uri)      # read into memory: dest may go


def registered_source(uri: str, tracking: str) -> str:
    """Where `models:/<name>/<version>`, `models:/<name>/latest` or `models:/<name>@<alias>`
    is stored, asked of the registry at `tracking` (MLflow's own resolution reads the
    process-wide registry URI)."""
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(tracking)
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = ref.partition("/")
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise UserError(f"no version of registered model {name!r}")
            version = str(max(int(v.version) for v in versions))
        elif not version.isdigit():
            raise UserError(f"expected models:/<name>/<version>, models:/<name>/latest or "
                             f"models:/<name>@<alias>, got {uri}")
    return client.get_model_version_download_uri(name, version)


def bundle_from_model_dir(model_dir: Path, name: str) -> ModelBundle:
    bundle_dir = model_dir / "artifacts" / BUNDLE_ARTIFACT
    if not bundle_dir.is_dir():
        raise ConfigError(f"MODEL: {name} is an MLflow Model but not one htl-ray logged (no "
                          f"artifacts/{BUNDLE_ARTIFACT} in it)")
    try:
        return ModelBundle.load(bundle_dir)
    except ValueError as exc:
        raise ConfigError(f"MODEL: {exc}") from None


def load_model(model: str | Path, tracking_uri: str | None = None) -> ModelBundle:
    """MODEL of `htl-ray predict`, in any of its forms, checked by building it once here: a
    checkpoint whose weights do not fit its architecture is an error naming MODEL, not a
    traceback from an actor."""
    text = str(model)
    if text.startswith(MLFLOW_SCHEMES):
        bundle = bundle_from_mlflow(text, tracking_uri)
    else:
        path = Path(model)
        if not path.exists():
            raise ConfigError(f"MODEL: {path} does not exist (expected a run directory, a "
                              "checkpoint directory, or runs:/<run id>/model, "
                              "models:/<name>/<version>)")
        if (path / "MLmodel").is_file():
            bundle = bundle_from_model_dir(path, str(path))
        else:
            bundle = bundle_from_checkpoint(checkpoint_of(path))
    try:
        bundle.build()
    except Exception as exc:  # noqa: BLE001 - unknown arch/encoder, wrong keys or shapes
        raise ConfigError(f"MODEL: {text}: its weights do not build the architecture it "
                          f"names ({type(exc).__name__}: {str(exc)[:300]})") from None
    return bundle
