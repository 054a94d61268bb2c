"""Checks that need no Ray, so a bad config, a missing dataset or a model smp cannot build
fails in seconds, before anything is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htl_ray.cluster import check_storage_uri
from htl_ray.config import ConfigError, ExperimentConfig
from htl_ray.data.schema import check_records
from htl_ray.paths import check_writable_dir


def preflight(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything that can be checked before Ray starts, with errors naming the key."""
    check_storage_uri(cfg)
    check_writable_dir(cfg.run.storage_path, "run.storage_path")
    data = Path(cfg.data.path)
    if not data.is_dir():
        raise ConfigError(f"data.path: dataset folder not found: {data} "
                          "(create it with `htl-ray data synth` or `htl-ray data ingest`)")
    manifest = check_records(data, "data.path")
    counts = manifest.get("split_counts", {})
    if not counts.get("train"):
        raise ConfigError(f"data.path: {data} has no training rows (split counts {counts})")
    if not counts.get("val"):
        raise ConfigError(f"data.path: {data} has no validation rows (split counts {counts})")
    from htl_ray.models import check_model_config

    check_model_config(cfg.model)
    return manifest
