"""The training command's checks before anything starts. Real 2-worker Ray Train runs — learning,
MLflow metrics and artifacts, ranks in sync, interrupt and resume — are tested with HTL on, in
test_htl_training.py (one run covers all of it; each Ray Train run costs ~40 s of start-up)."""

from __future__ import annotations

import subprocess
import sys


def test_bad_config_fails_before_ray_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "htl_ray.cli", "train", "train.epoch=3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'train.epoch' (did you mean 'train.epochs'?)" in proc.stderr
    assert "starting Ray" not in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "htl_ray.cli", "train",
                           f"data.path={tmp_path / 'nope'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "data.path: dataset folder not found" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()           # nothing was started
