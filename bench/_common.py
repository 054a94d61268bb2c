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


def init_ray(num_cpus: int | None = None) -> None:
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", configure_logging=False, log_to_driver=False)


class PeakRss:
    """Peak resident memory (VmHWM) of the processes whose command line contains `title`
    (Ray titles actor processes `ray::ClassName`), sampled from /proc while it runs."""

    def __init__(self, title: str, every_s: float = 0.05):
        import threading

        self.title, self.every_s = title.encode(), every_s
        self.peaks: dict[int, int] = {}                 # pid -> bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if self.title not in Path(f"/proc/{entry}/cmdline").read_bytes():
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        self.peaks[int(entry)] = max(self.peaks.get(int(entry), 0), kb * 1024)
            except (OSError, ValueError):
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def linear_fit(x, y) -> tuple[float, float, float]:
    """(slope, intercept, R²) of a least-squares line."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (residual ** 2).sum() / total) if total else 1.0
    return float(slope), float(intercept), r2
