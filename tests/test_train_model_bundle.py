"""htl_ray.train.model_bundle: a checkpoint as a ModelBundle, and a run's MLflow Model. Real
files throughout: torch checkpoints of a small U-Net in run directories (htl_run.json,
meta.json, one cut short), a synthetic dataset's manifest for the training size of old runs,
and a real MLflow SQLite store for registering a run's model. Each mistake is a ConfigError
naming MODEL or `register:` and what was expected. No Ray."""

from __future__ import annotations

import json

import pytest
import torch
from model_files import small_model, small_model_config, write_checkpoint, write_run_state

from htl_ray.config import ConfigError
from htl_ray.errors import UserError
from htl_ray.inference import BUNDLE_ARTIFACT, ModelBundle
from htl_ray.train.model_bundle import (
    bundle_from_checkpoint,
    checkpoint_of,
    input_size_of,
    register_run,
    save_run_model,
)


@pytest.fixture(scope="module")
def model():
    return small_model(seed=3)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_training_size_comes_from_the_checkpoint_the_run_or_the_runs_dataset(tmp_path):
    from htl_ray.data.synth import synthesize

    assert input_size_of({"input_size": [40, 48]}, {"input_size": [8, 8]}) == (40, 48)
    assert input_size_of({}, {"input_size": [24, 24]}) == (24, 24)
    synthesize(tmp_path / "ds", n=4, size=20, seed=0)
    old_run = {"config": {"data": {"path": str(tmp_path / "ds")}}}
    assert input_size_of({}, old_run) == (20, 20)
    with pytest.raises(ConfigError, match=r"^MODEL: the checkpoint does not record the size it "
                                          r"was trained at, and its run's dataset \(unknown\) "
                                          r"is not here to read it from$"):
        input_size_of({}, {})
    gone = {"config": {"data": {"path": str(tmp_path / "gone")}}}
    with pytest.raises(ConfigError, match=f"its run's dataset \\({tmp_path / 'gone'}\\) is not "
                                          "here"):
        input_size_of({"input_size": None}, gone)


def test_a_checkpoint_in_a_run_directory_is_a_bundle_with_the_runs_identity(model, tmp_path):
    run = write_run_state(tmp_path / "run", mlflow_run_id="a" * 32, dataset_fingerprint="f00d",
                          config={"model": small_model_config()})
    ckpt = write_checkpoint(run / "checkpoint_3", model, epoch=3, input_size=(32, 40))
    bundle = bundle_from_checkpoint(ckpt)
    assert _same_weights(bundle.state, model.state_dict())
    assert bundle.model_config == small_model_config() and bundle.input_size == (32, 40)
    assert bundle.identity == {"mlflow_run_id": "a" * 32, "checkpoint_epoch": 3,
                               "dataset_fingerprint": "f00d", "checkpoint": str(ckpt.resolve())}
    # an unreadable run state counts as none: the weights still load, without the run's identity
    (run / "htl_run.json").write_text('{"mlflow_run_id": "a')
    bundle = bundle_from_checkpoint(ckpt)
    assert bundle.identity["mlflow_run_id"] is None and bundle.identity["checkpoint_epoch"] == 3


def test_the_architecture_comes_from_meta_json_else_from_the_run(model, tmp_path):
    other = small_model_config(decoder_channels=[32, 16, 8, 8, 4])
    run = write_run_state(tmp_path / "run", config={"model": other, "data": {}})
    ckpt = write_checkpoint(run / "checkpoint_0", model, epoch=0)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert bundle_from_checkpoint(ckpt).model_config == small_model_config()
    del meta["model_config"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert bundle_from_checkpoint(ckpt).model_config == other
    (run / "htl_run.json").unlink()
    with pytest.raises(UserError, match="no model_config in meta.json and no htl_run.json "
                                        "beside it; cannot tell which architecture to build"):
        bundle_from_checkpoint(ckpt)


def test_a_checkpoint_cut_short_is_named(model, tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", model, epoch=0)
    data = (ckpt / "checkpoint.pt").read_bytes()
    (ckpt / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(ConfigError, match=f"^MODEL: {ckpt / 'checkpoint.pt'} is not a loadable "
                                          "checkpoint \\(UserError: .*cut short"):
        bundle_from_checkpoint(ckpt)


def test_checkpoint_of_finds_the_checkpoint_a_path_stands_for(model, tmp_path):
    run = write_run_state(tmp_path / "run", config={"train": {"checkpoint_metric": "val/iou"}})
    first = write_checkpoint(run / "checkpoint_0", model, epoch=0,
                             metrics={"val/dice": 0.8, "val/iou": 0.3})
    second = write_checkpoint(run / "checkpoint_1", model, epoch=1,
                              metrics={"val/dice": 0.5, "val/iou": 0.4})
    assert checkpoint_of(first / "checkpoint.pt") == first
    assert checkpoint_of(second) == second
    assert checkpoint_of(run) == second                 # best by the run's own metric (iou)
    empty = write_run_state(tmp_path / "empty_run", config={})
    with pytest.raises(ConfigError, match=f"^MODEL: run directory {empty} holds no checkpoint "
                                          "yet$"):
        checkpoint_of(empty)
    with pytest.raises(ConfigError, match=f"^MODEL: {tmp_path} is neither a run directory "
                                          r"\(htl_run.json\), a checkpoint directory "
                                          r"\(checkpoint.pt\) nor an MLflow Model \(MLmodel\)$"):
        checkpoint_of(tmp_path)


def test_save_run_model_replaces_the_runs_mlflow_model(model, tmp_path):
    run = write_run_state(tmp_path / "run", mlflow_run_id="b" * 32)
    ckpt = write_checkpoint(run / "checkpoint_2", model, epoch=2)
    stale = run / "mlflow_model" / "old.txt"
    stale.parent.mkdir()
    stale.write_text("from an earlier best checkpoint")
    dest = save_run_model(run, ckpt)
    assert dest == run / "mlflow_model" and not stale.exists()
    assert "python_function" in (dest / "MLmodel").read_text()
    bundle = ModelBundle.load(dest / "artifacts" / BUNDLE_ARTIFACT)
    assert _same_weights(bundle.state, model.state_dict()) and bundle.input_size == (32, 32)
    assert bundle.identity["mlflow_run_id"] == "b" * 32
    assert bundle.identity["checkpoint_epoch"] == 2


def test_register_run_logs_the_model_once_and_registers_one_version(model, tmp_path,
                                                                     tracking_uri):
    from htl_ray import tracking
    from htl_ray.tracking import client

    run_id = tracking.start_run(tracking_uri, "bundles", "r", {}, {})
    run = write_run_state(tmp_path / "run", mlflow_run_id=run_id, tracking_uri=tracking_uri,
                          config={})
    write_checkpoint(run / "checkpoint_0", model, epoch=0, metrics={"val/dice": 0.6})
    mlflow = client(tracking_uri)
    assert [a.path for a in mlflow.list_artifacts(run_id, "model")] == []
    assert register_run(run, "lesions") == ("lesions", "1")
    assert "model/MLmodel" in {a.path for a in mlflow.list_artifacts(run_id, "model")}
    (version,) = mlflow.search_model_versions("name = 'lesions'")
    assert version.run_id == run_id and version.source.endswith("/model")
    # again: the same version, no second one
    assert register_run(str(run), "lesions") == ("lesions", "1")
    assert len(mlflow.search_model_versions("name = 'lesions'")) == 1


def test_register_run_mistakes_name_the_run_and_register_nothing(tmp_path, tracking_uri):
    from htl_ray import tracking
    from htl_ray.tracking import client

    no_run = write_run_state(tmp_path / "no_run", config={})        # no MLflow run recorded
    with pytest.raises(ConfigError, match=f"^register: {no_run}/htl_run.json: records no "
                                          "MLflow run"):
        register_run(no_run, "m")
    run_id = tracking.start_run(tracking_uri, "bundles", "r", {}, {})
    bare = write_run_state(tmp_path / "bare", mlflow_run_id=run_id, tracking_uri=tracking_uri,
                           config={})
    with pytest.raises(ConfigError, match=f"^register: {bare} holds no checkpoint$"):
        register_run(bare, "m")
    assert client(tracking_uri).search_registered_models() == []
