"""`htl-ray demo`, run as `make demo` runs it: a fresh process in an empty directory."""

import subprocess
import sys

from htl_ray.data.schema import read_manifest


def test_demo_runs_end_to_end_and_says_where_to_look(tmp_path):
    """`make demo`'s job, one epoch and one refresh shorter (the HTL set comes from the same
    epoch-4 model as the shipped demo's last refresh): synthetic data, HTL training with 2
    workers, the HTL report finding a planted hard group, predictions of the test split with
    the quality-control risk; MLflow in ./mlflow.db."""
    import pandas as pd

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-m", "htl_ray.cli", "demo", "train.epochs=5",
                           "htl.refresh_every=4"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "=== htl-ray: training finished ===" in out
    assert "val dice" in out and "worst-group dice" in out
    assert (f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'} "
            "--host 127.0.0.1") in out                             # servers: localhost only
    assert "dashboard on http://127.0.0.1:" in out
    assert (tmp_path / "mlflow.db").is_file()
    assert read_manifest(tmp_path / "data" / "synthetic")["rows"] == 400
    marker = "it found the planted hard group(s) enriched among HTL samples: "
    assert marker in out, out[-3000:]
    found = out.split(marker)[1].splitlines()[0]
    assert "site=head/neck" in found or "age_bin=75+" in found
    run_dir = next((tmp_path / "htl_runs").glob("demo-*"))
    assert (run_dir / "report" / "report.html").is_file()
    table = pd.read_csv(run_dir / "predictions" / "predictions.csv")
    assert len(table) == 60 and (run_dir / "predictions" / f"{table.id[0]}_segmentation.png"
                                 ).is_file()
    assert f"predictions:     {run_dir / 'predictions'}" in out
