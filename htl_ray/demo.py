"""`htl-ray demo`: the main job end to end on embedded defaults (synthetic data, local Ray)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from htl_ray.config import load_config
from htl_ray.data.schema import MANIFEST_FILE
from htl_ray.data.synth import synthesize

DEMO_N, DEMO_SIZE = 400, 64


def demo_config_path() -> Path:
    return Path(str(resources.files("htl_ray") / "configs" / "demo.yaml"))


def run_demo(overrides: list[str] | None = None):
    from htl_ray.train.trainer import run_training

    # Each demo run gets its own run directory, so `make demo` can be run again and again.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = load_config(demo_config_path(), [f"run.name=demo-{stamp}", *(overrides or [])])
    data = Path(cfg.data.path)
    if not (data / MANIFEST_FILE).is_file():
        print(f"[htl-ray] generating synthetic data in {data} ({DEMO_N} images, "
              f"{DEMO_SIZE}x{DEMO_SIZE})")
        synthesize(data, n=DEMO_N, size=DEMO_SIZE, seed=cfg.run.seed)
    return run_training(cfg)
