"""Credentials out of everything htl-ray writes or prints: MLflow params, tags, artifacts,
config copies and console lines. Only URIs can carry them (the config has no free-form keys);
the one file that keeps the URI as given is the run's own `htl_run.json`, which `--resume`
needs to reach the same server."""

from __future__ import annotations

import re
from typing import Any

USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access_token|password|secret|key|api_key)=)[^&\s]+")


def redact(text: str) -> str:
    """`https://user:pw@host/?token=t` → `https://user:***@host/?token=***`: what MLflow
    params, tags and console lines may show of a URI that carries credentials. (Pass
    credentials as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN
    instead: then no file or log ever holds them.)"""
    text = USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return SECRET_QUERY.sub(lambda m: f"{m[1]}***", text)


def redact_tree(value: Any) -> Any:
    """`redact` applied to every string in a nested dict/list (a config as a dict)."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return redact(value) if isinstance(value, str) else value
