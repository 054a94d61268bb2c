"""Transitional: the sweep and protocol modules' old names for the run state, until they read
it through htl_ray.run_dir.RunDir (removed in this issue's last step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htl_ray.run_dir import STATE_FILE as RUN_STATE_FILE
from htl_ray.run_dir import RunDir

__all__ = ["RUN_STATE_FILE", "best_of_run", "read_run_state"]


def read_run_state(run_dir: str | Path) -> dict[str, Any]:
    state = RunDir(run_dir).state()
    return state.to_json() if state else {}


def best_of_run(run_dir: str | Path) -> tuple[Path, dict[str, float]] | None:
    return RunDir(run_dir).best_checkpoint()
