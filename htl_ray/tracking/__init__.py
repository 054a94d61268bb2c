"""MLflow as htl-ray uses it: the one place a client is built, the URI rules, the schema of
tags and roles, and the outbox that keeps writes through an outage.

A thin front (as optuna's is) over its modules:
- `store`: tracking URIs, reachability, `client(uri)`, runs, metrics, tags, artifacts;
- `schema`: every tag name and role htl-ray writes or reads (no MLflow import);
- `outbox`: writes kept on disk until the server takes them (`htl-ray sync`).

The store's names are re-exported here lazily, so importing `htl_ray.tracking.schema` (as
Ray workers do) does not import MLflow.
"""

from __future__ import annotations

from typing import Any

_STORE = ("DEFAULT_URI", "absolute_uri", "check_reachable", "client", "end_run",
          "get_or_create_experiment", "git_commit", "log_artifact", "log_artifacts",
          "log_metrics", "package_versions", "redact", "resolve_tracking_uri", "run_status",
          "set_tags", "sqlite_path", "start_run", "uri_key")

__all__ = list(_STORE)


def __getattr__(name: str) -> Any:
    if name in _STORE:
        from htl_ray.tracking import store

        return getattr(store, name)
    raise AttributeError(f"module 'htl_ray.tracking' has no attribute {name!r}")
