"""Sweep files written for the tests of htl_ray.tune (a helper, not a test module)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_sweep(tmp_path: Path, space: dict, sweep: dict | None = None, **top) -> Path:
    """`tmp_path/sweep.yaml`: 3 epochs of the default config, `space`, the `sweep:` settings
    (default: only its name) and any other top-level sections."""
    body = {"overrides": ["train.epochs=3"], "sweep": sweep or {"name": "s"}, "space": space,
            **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path
