"""htl_ray.predict.source: every form MODEL of `htl-ray predict` takes — a checkpoint directory
or file, a run directory, a local MLflow Model folder, `runs:/<id>/<path>`, and the registry's
`models:/<name>/<version>`, `/latest` and `@<alias>` — read from real files and a real MLflow
SQLite store (two logged models, a registered name with two versions and an alias). Each
mistake is one ConfigError starting `MODEL:` (or naming --tracking-uri) with what was expected.
No Ray."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from model_files import small_model, small_model_config, write_checkpoint, write_run_state

from htl_ray.config import ConfigError
from htl_ray.predict.source import bundle_from_model_dir, load_model, registered_source


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# the logged models are copied four times: a fifth of resnet18's weights
ENCODER = "mobilenet_v2"


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_store_template):
    """A run logging `model` (epoch 4) and `model_b` (the same weights, recorded as epoch 7);
    registered model `lesions`: version 1 = model (alias `champion`), 2 = model_b; `empty`:
    no version."""
    from htl_ray import tracking
    from htl_ray.mlflow_model import save_mlflow_model
    from htl_ray.train.model_bundle import bundle_from_checkpoint

    root = tmp_path_factory.mktemp("predict-source")
    shutil.copyfile(_mlflow_store_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = small_model(seed=5, encoder=ENCODER)
    run = write_run_state(root / "run", mlflow_run_id="c" * 32, config={})
    ckpt = write_checkpoint(run / "checkpoint_4", model, epoch=4, metrics={"val/dice": 0.5},
                            model_config=small_model_config(encoder=ENCODER))
    local = save_mlflow_model(bundle_from_checkpoint(ckpt), root / "mlflow_model")
    local_b = shutil.copytree(local, root / "mlflow_model_b")
    desc_file = local_b / "artifacts" / "bundle" / "model.json"
    desc = json.loads(desc_file.read_text())
    desc["identity"]["checkpoint_epoch"] = 7
    desc_file.write_text(json.dumps(desc))

    client = tracking.client(uri)
    run_id = tracking.start_run(uri, "predict-source", "r", {}, {})
    client.log_artifacts(run_id, str(local), "model")
    client.log_artifacts(run_id, str(local_b), "model_b")
    artifacts = client.get_run(run_id).info.artifact_uri
    client.create_registered_model("lesions")
    client.create_model_version("lesions", source=f"{artifacts}/model", run_id=run_id)
    client.create_model_version("lesions", source=f"{artifacts}/model_b", run_id=run_id)
    client.set_registered_model_alias("lesions", "champion", "1")
    client.create_registered_model("empty")
    return SimpleNamespace(uri=uri, run_id=run_id, weights=model.state_dict(), run=run,
                           ckpt=ckpt, local=local, root=root)


def test_every_local_form_loads_the_same_weights(store):
    for model in (store.ckpt, store.ckpt / "checkpoint.pt", store.run, str(store.run),
                  store.local):
        bundle = load_model(model)
        assert _same_weights(bundle.state, store.weights), model
        assert bundle.input_size == (32, 32)
        assert bundle.model_config == small_model_config(encoder=ENCODER)
        assert bundle.identity["checkpoint_epoch"] == 4
        assert bundle.identity["checkpoint"] == str(store.ckpt.resolve())


@pytest.mark.parametrize("uri, epoch", [
    ("runs:/{run_id}/model", 4), ("runs:/{run_id}/model_b", 7), ("models:/lesions/1", 4),
    ("models:/lesions/2", 7), ("models:/lesions/latest", 7), ("models:/lesions", 7),
    ("models:/lesions@champion", 4),
])
def test_mlflow_uris_resolve_to_the_logged_model(store, uri, epoch):
    before = os.environ.get("MLFLOW_TRACKING_URI")
    bundle = load_model(uri.format(run_id=store.run_id), tracking_uri=store.uri)
    assert bundle.identity["checkpoint_epoch"] == epoch
    assert _same_weights(bundle.state, store.weights)
    assert os.environ.get("MLFLOW_TRACKING_URI") == before      # no global MLflow state


def test_registered_source_is_the_versions_artifact_location(store):
    assert registered_source("models:/lesions/2", store.uri).endswith(
        f"{store.run_id}/artifacts/model_b")
    assert registered_source("models:/lesions@champion", store.uri).endswith(
        f"{store.run_id}/artifacts/model")


def test_the_environments_store_is_used_unless_one_is_given(store, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert load_model("models:/lesions/1").identity["checkpoint_epoch"] == 4
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert load_model("models:/lesions/2", store.uri).identity["checkpoint_epoch"] == 7


@pytest.mark.parametrize("uri, detail", [
    ("models:/lesions/abc", "(UserError: expected models:/<name>/<version>, "
                            "models:/<name>/latest or models:/<name>@<alias>, got "
                            "models:/lesions/abc)"),
    ("models:/empty/latest", "(UserError: no version of registered model 'empty')"),
    ("models:/nobody/1", "(MlflowException: Registered Model with name=nobody not found)"),
    ("models:/lesions@nosuchalias", "(MlflowException: "),
    ("runs:/" + "0" * 32 + "/model", "(MlflowException: "),
])
def test_an_mlflow_uri_that_names_nothing_is_one_error(store, uri, detail):
    with pytest.raises(ConfigError) as err:
        load_model(uri, tracking_uri=store.uri)
    message = str(err.value)
    assert message.startswith(f"MODEL: {uri} not found in {store.uri} "), message
    assert detail in message and "\n" not in message, message


def test_a_store_that_is_not_there_is_named_with_the_option(tmp_path):
    missing = f"sqlite:///{tmp_path / 'moved.db'}"
    with pytest.raises(ConfigError, match=f"^--tracking-uri: no MLflow store at {missing}"):
        load_model("models:/lesions/1", tracking_uri=missing)


def test_mlflow_model_folders_htl_ray_did_not_write_are_named(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(ConfigError, match=f"^MODEL: {foreign} is an MLflow Model but not one "
                                          r"htl-ray logged \(no artifacts/bundle in it\)$"):
        load_model(foreign)
    bundle_dir = foreign / "artifacts" / "bundle"
    bundle_dir.mkdir(parents=True)
    (bundle_dir / "model.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"^MODEL: {bundle_dir}: not an htl-ray model "
                                          r"\(model.json \+ weights.pt\)"):
        bundle_from_model_dir(foreign, "the model")


def test_weights_that_do_not_build_their_architecture_are_named(tmp_path):
    wider = small_model_config(decoder_channels=[32, 16, 8, 8, 4])
    ckpt = write_checkpoint(tmp_path / "ckpt", small_model(), epoch=0, model_config=wider)
    with pytest.raises(ConfigError, match=f"^MODEL: {ckpt}: its weights do not build the "
                                          r"architecture it names \(RuntimeError: Error\(s\) in "
                                          "loading state_dict"):
        load_model(ckpt)
    unknown = write_checkpoint(tmp_path / "ckpt2", small_model(), epoch=0,
                               model_config=small_model_config(arch="unet9"))
    with pytest.raises(ConfigError, match=r"\(ValueError: model.arch='unet9'"):
        load_model(str(unknown))


def test_a_path_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"^MODEL: {tmp_path / 'nope'} does not exist "
                                          r"\(expected a run directory, a checkpoint directory, "
                                          r"or runs:/<run id>/model, models:/<name>/<version>\)$"):
        load_model(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is neither a run directory"):
        load_model(Path(tmp_path / "plain"))
