"""htl_ray.report.inputs: what a report reads from one run directory, gathered from real files
(a synthetic dataset in Parquet, torch checkpoints of a small U-Net with and without per-image
validation tables, HTL version tables) — which checkpoint counts as best, where the HTL scores
come from (the last refresh, or scored here for a run without refreshes), the group columns,
and each mistake as a UserError naming the directory and what was expected. No Ray, no MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_files import small_model, small_model_config, write_checkpoint, write_run_state

from htl_ray.analysis.groups import GROUP_ATTRIBUTES
from htl_ray.config import load_config
from htl_ray.data.schema import read_table
from htl_ray.errors import UserError
from htl_ray.report.inputs import best_evaluated_checkpoint, load_run
from htl_ray.run_dir import PER_SAMPLE_FILE, RunDir

# a fifth of resnet18's weights: a run without refreshes is scored here with pruned copies
ENCODER = "mobilenet_v2"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from htl_ray.data.synth import synthesize

    out = tmp_path_factory.mktemp("report-inputs") / "ds"
    synthesize(out, n=30, size=32, seed=4)
    return out


def _val_table(dataset: Path, dice: float) -> pd.DataFrame:
    val = read_table(dataset, split="val").drop(columns=["split", "source"])
    val["dice"] = dice
    return val


def _run(dataset: Path, run_dir: Path, *, versions: int = 0, q: float = 0.2) -> Path:
    """Epoch 0 (dice 0.4) and epoch 1 (dice 0.7) evaluated; epoch 2 (dice 0.9) without its
    per-image table, as if cut short."""
    cfg = load_config(None, [f"data.path={dataset}", f"run.storage_path={run_dir.parent}",
                             f"run.name={run_dir.name}", f"model.encoder={ENCODER}",
                             "model.decoder_channels=[16,8,8,4,4]", "htl.sparsities=[0.3,0.6]",
                             f"htl.q={q}"])
    write_run_state(run_dir, mlflow_run_id="r" * 32, tracking_uri="sqlite:///unused.db",
                    config=cfg.to_dict())
    model = small_model(seed=1, encoder=ENCODER)
    for epoch, dice in ((0, 0.4), (1, 0.7), (2, 0.9)):
        ckpt = write_checkpoint(run_dir / f"checkpoint_{epoch}", model, epoch=epoch,
                                metrics={"val/dice": dice},
                                model_config=small_model_config(encoder=ENCODER))
        if epoch < 2:
            _val_table(dataset, dice).to_parquet(ckpt / PER_SAMPLE_FILE)
    train = read_table(dataset, split="train")
    for v in range(1, versions + 1):
        h = np.linspace(0, 1, len(train)) ** v
        path = RunDir(run_dir).htl_version_file(v)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": train["id"], "h": h, "selected": h >= 0.5,
                      "weight": 1.0}).to_parquet(path)
    return run_dir


def test_the_best_checkpoint_is_the_best_one_with_per_image_metrics(dataset, tmp_path):
    run = _run(dataset, tmp_path / "run")
    assert best_evaluated_checkpoint(run, "val/dice") == (run / "checkpoint_1", 1)
    # without "epoch" among its metrics (older runs), the epoch comes from meta.json
    meta_file = run / "checkpoint_1" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["metrics"] = {"val/dice": 0.7}
    meta["epoch"] = 5
    meta_file.write_text(json.dumps(meta))
    assert best_evaluated_checkpoint(run, "val/dice") == (run / "checkpoint_1", 5)
    with pytest.raises(UserError, match=r"run: no checkpoint with val/iou and "
                                        r"val_per_sample.parquet; is this a finished `htl-ray "
                                        r"train` run directory\?"):
        best_evaluated_checkpoint(run, "val/iou")


def test_a_run_with_refreshes_reports_its_last_htl_version(dataset, tmp_path, monkeypatch):
    run = _run(dataset, tmp_path / "refreshed", versions=2)
    monkeypatch.chdir(tmp_path)
    inputs = load_run("refreshed")                         # a relative path is resolved
    assert inputs.run_dir == run.resolve() and inputs.name == "refreshed"
    assert inputs.best_checkpoint == run / "checkpoint_1" and inputs.best_epoch == 1
    assert inputs.state.mlflow_run_id == "r" * 32
    assert inputs.htl_source == "the run's last HTL refresh (version 2 of 2)"
    assert sorted(inputs.versions) == [1, 2]
    train = read_table(dataset, split="train")
    assert inputs.htl["id"].tolist() == train["id"].tolist()
    assert np.allclose(inputs.htl["h"], np.linspace(0, 1, len(train)) ** 2)
    assert inputs.htl["selected"].tolist() == (inputs.htl["h"] >= 0.5).tolist()
    # training metadata merged in, and a group column per attribute
    assert inputs.htl["site"].tolist() == train["site"].fillna("unknown").tolist()
    assert set(GROUP_ATTRIBUTES) <= set(inputs.htl.columns)
    assert set(GROUP_ATTRIBUTES) <= set(inputs.val.columns)
    assert (inputs.val["dice"] == 0.7).all() and len(inputs.val) == (
        read_table(dataset)["split"] == "val").sum()
    assert sorted(inputs.dataset["split"].unique()) == ["test", "train", "val"]
    assert "image" not in inputs.dataset.columns          # metadata only, no pixels


def test_a_run_without_refreshes_is_scored_with_its_best_checkpoint(dataset, tmp_path):
    run = _run(dataset, tmp_path / "plain", q=0.25)
    inputs = load_run(run)
    assert inputs.versions == {}
    assert inputs.htl_source == ("scored for this report with the best checkpoint (epoch 2), "
                                 "label-free, top q = 0.25")
    train = read_table(dataset, split="train")
    assert sorted(inputs.htl["id"]) == sorted(train["id"])
    assert inputs.htl["h"].between(0, 1).all()
    assert int(inputs.htl["selected"].sum()) == round(0.25 * len(train))
    # the selected are the highest scores
    chosen, rest = inputs.htl[inputs.htl["selected"]], inputs.htl[~inputs.htl["selected"]]
    assert chosen["h"].min() >= rest["h"].max()


def test_what_is_not_a_run_or_lost_its_dataset_is_named(dataset, tmp_path):
    with pytest.raises(UserError, match=r"^report: .*: no htl_run.json there; not a run "
                                        r"directory$"):
        load_run(tmp_path)
    (tmp_path / "htl_run.json").write_text("{}")                 # there, but records nothing
    with pytest.raises(UserError, match=r"htl_run.json: records no run \(an empty JSON "):
        load_run(tmp_path)
    (tmp_path / "htl_run.json").unlink()
    import shutil

    moved = tmp_path / "ds_moved"
    shutil.copytree(dataset, moved)
    run = _run(moved, tmp_path / "orphan")
    shutil.rmtree(moved)
    with pytest.raises(UserError, match=f"orphan: the run's dataset {moved} is not here "
                                        r"\(the report reads images and metadata from it\)"):
        load_run(run)
