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


def test_sigterm_marks_the_run_failed_and_keeps_its_checkpoints(ray_cluster, synth_dataset,
                                                                tmp_path):
    """`ray job stop`, `kill`, a scheduler's preemption: SIGTERM is handled like Ctrl-C."""
    import os
    import signal
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "htl_ray.cli", "train", f"data.path={synth_dataset}",
         f"tracking.uri={uri}", f"run.storage_path={tmp_path / 'runs'}", "run.name=t",
         "train.epochs=50", "scaling.num_workers=1", "data.limit_train=32",
         "model.decoder_channels=[16,8,8,4,4]"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, run_id = MlflowClient(uri), None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "mlflow.db").is_file():
            exp = client.get_experiment_by_name("htl-ray")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "val/dice"):
                run_id = runs[0].info.run_id
                break
        time.sleep(1)
    assert run_id, "the run never logged its first epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; results already written are kept" in err
    assert client.get_run(run_id).info.status == "FAILED"
    assert list((tmp_path / "runs" / "t").glob("checkpoint_*/meta.json"))
