"""Helpers shared by the benchmark scripts (not part of the package API)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SHARED_ISIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2018-task1-256"


def isic_dir() -> Path | None:
    path = Path(os.environ.get("HTL_RAY_ISIC_DIR", SHARED_ISIC))
    return path if (path / "ISIC2018_Task1-2_Training_Input").is_dir() else None


def workdir(name: str) -> Path:
    root = Path(os.environ.get("HTL_RAY_BENCH_DIR", tempfile.gettempdir())) / f"htl-bench-{name}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def quiet(_: str) -> None:
    return None


def init_ray(num_cpus: int | None = None) -> None:
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 configure_logging=False, log_to_driver=False)
