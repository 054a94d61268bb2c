"""htl_ray.mlflow_model: a tiny trained U-Net saved as an MLflow Model folder (signature, pinned
requirements, the package's code, the bundle inside) and loaded back with MLflow's own loader
in this process: its masks are `inference.segment`'s, thresholded, at each input's size;
inputs outside the signature are refused. Saving leaves the process's environment and logging
as they were."""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata

import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from model_files import small_model_config

from htl_ray import mlflow_model
from htl_ray.config import ModelConfig
from htl_ray.inference import BUNDLE_ARTIFACT, ModelBundle, segment
from htl_ray.mlflow_model import (
    REQUIREMENTS,
    HtlSegmentationModel,
    requirements,
    save_mlflow_model,
    signature,
)
from htl_ray.models import create_model

TINY = small_model_config()             # the tests' small U-Net (tests/model_files.py)
PROGRESS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(bundle, its model, the MLflow Model folder, the model as `mlflow.pyfunc.load_model`
    loads it)."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(**TINY)).eval()
    bundle = ModelBundle(model.state_dict(), dict(TINY), (32, 32), {"run_id": "r-1", "epoch": 3})
    dest = tmp_path_factory.mktemp("mlflow-model") / "model"
    assert save_mlflow_model(bundle, dest) == dest
    return bundle, model, dest, mlflow.pyfunc.load_model(str(dest))


def test_the_folder_holds_the_signature_requirements_code_and_bundle(saved):
    bundle, _, dest, _ = saved
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "uint8",
                                                        "shape": [-1, -1, -1, 3]}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "uint8",
                                                         "shape": [-1, -1, -1]}}]
    assert (dest / "code" / "htl_ray" / "inference.py").is_file()       # the code travels
    assert f"torch=={metadata.version('torch')}" in (dest / "requirements.txt").read_text()
    inside = ModelBundle.load(dest / "artifacts" / BUNDLE_ARTIFACT)
    assert inside.identity == {"run_id": "r-1", "epoch": 3} and inside.input_size == (32, 32)
    assert all(torch.equal(inside.state[k], bundle.state[k]) for k in bundle.state)


def test_the_loaded_model_gives_segments_masks_at_each_inputs_size(saved):
    bundle, model, _, loaded = saved
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    masks = loaded.predict(images)
    assert masks.shape == (2, 40, 50) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    probs = segment(model, list(images), bundle.input_size)
    for mask, prob in zip(masks, probs, strict=True):
        assert np.array_equal(mask, np.where(prob > 0.5, 255, 0))
    python_model = loaded.unwrap_python_model()
    assert isinstance(python_model, HtlSegmentationModel)
    assert python_model.bundle.identity["run_id"] == "r-1"
    one = python_model.predict(None, images[1])                    # HxWx3: one image
    assert one.shape == (1, 40, 50) and np.array_equal(one[0], masks[1])


def test_inputs_outside_the_signature_are_refused(saved):
    *_, loaded = saved
    images = np.zeros((1, 16, 16, 3), np.uint8)
    for bad in (images[..., :2], images.astype(np.float64)):      # 2 channels; not uint8
        with pytest.raises(MlflowException, match="Failed to enforce schema"):
            loaded.predict(bad)
    with pytest.raises(ValueError, match=r"^expected RGB images \[N, H, W, 3\], got shape "
                                         r"\(16, 16\)$"):
        loaded.unwrap_python_model().predict(None, images[0, ..., 0])


def test_a_model_is_not_saved_over_an_existing_folder(saved):
    bundle, _, dest, _ = saved
    with pytest.raises(MlflowException, match=f"{dest}.* already exists"):
        save_mlflow_model(bundle, dest)


def test_requirements_pin_this_environments_versions(monkeypatch):
    pins = requirements()
    assert pins == [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]
    assert [p.split("==")[0] for p in pins] == ["torch", "segmentation-models-pytorch",
                                                "pillow", "numpy", "mlflow"]
    monkeypatch.setattr(mlflow_model, "REQUIREMENTS", ("numpy", "no-such-package-htl-ray"))
    assert requirements() == [f"numpy=={np.__version__}", "no-such-package-htl-ray"]


def test_signature_takes_rgb_uint8_images_and_gives_masks():
    sig = signature()
    (spec_in,), (spec_out,) = sig.inputs.inputs, sig.outputs.inputs
    assert (spec_in.type, spec_in.shape) == (np.dtype(np.uint8), (-1, -1, -1, 3))
    assert (spec_out.type, spec_out.shape) == (np.dtype(np.uint8), (-1, -1, -1))


@pytest.mark.parametrize("before", [None, "true"])
def test_progress_bars_and_pickle_warnings_are_off_only_while_saving(monkeypatch, before):
    if before is None:
        monkeypatch.delenv(PROGRESS, raising=False)
    else:
        monkeypatch.setenv(PROGRESS, before)
    log = logging.getLogger("mlflow.pyfunc")
    monkeypatch.setattr(log, "level", logging.INFO)
    with pytest.raises(RuntimeError, match="saving failed"):
        with mlflow_model._no_progress_bars():
            assert os.environ[PROGRESS] == "false" and log.level == logging.ERROR
            raise RuntimeError("saving failed")
    assert os.environ.get(PROGRESS) == before and log.level == logging.INFO
