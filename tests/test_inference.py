"""htl_ray.inference: a ModelBundle saved and loaded (the same weights, the same outputs) or
refused with the folder named; and the one pre/post-processing path — decode as ingestion,
resize to the training size (height, width), scale to [0, 1], segment, resize the probability
back to each image's own size, threshold at 0.5 — checked with a 1×1-convolution model whose
output is known in closed form, and with a real (tiny) U-Net."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import small_model_config
from PIL import Image

from htl_ray.config import ModelConfig
from htl_ray.data.images import RecordDefect
from htl_ray.errors import UserError
from htl_ray.inference import (
    BUNDLE_FILE,
    WEIGHTS_FILE,
    ModelBundle,
    load_rgb,
    mask_of,
    probability_at,
    segment,
    to_input_size,
    to_tensor,
)
from htl_ray.models import create_model

TINY = small_model_config()             # the tests' small U-Net (tests/model_files.py)


def _mean_model() -> torch.nn.Module:
    """logit = mean of the pixel's channels (in [0, 1]) − 0.5: sigmoid(±0.5) at white/black."""
    conv = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1 / 3)
        conv.bias.fill_(-0.5)
    return conv.eval()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    model = create_model(ModelConfig(**TINY)).eval()
    return ModelBundle(state=model.state_dict(), model_config=dict(TINY), input_size=(32, 32),
                       identity={"run_id": "abc123", "epoch": 4, "dir": Path("/runs/r1")})


# ------------------------------------------------------------------ the bundle


def test_a_bundle_is_saved_and_loaded_with_the_same_weights_and_outputs(bundle, tmp_path):
    d = bundle.save(tmp_path / "model")
    assert sorted(p.name for p in d.iterdir()) == [BUNDLE_FILE, WEIGHTS_FILE]
    desc = json.loads((d / BUNDLE_FILE).read_text())
    assert desc == {"model_config": TINY, "input_size": [32, 32],
                    "identity": {"run_id": "abc123", "epoch": 4, "dir": "/runs/r1"}}
    loaded = ModelBundle.load(str(d))
    assert loaded.input_size == (32, 32) and loaded.model_config == TINY
    assert loaded.identity["epoch"] == 4
    assert loaded.state.keys() == bundle.state.keys()
    assert all(torch.equal(loaded.state[k], bundle.state[k]) for k in bundle.state)
    model = loaded.build()
    assert not model.training                                          # ready to predict
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = create_model(ModelConfig(**TINY))
    reference.load_state_dict(bundle.state)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))


def test_a_folder_that_is_not_a_bundle_is_named(bundle, tmp_path):
    with pytest.raises(UserError, match=rf"^{tmp_path}: not an htl-ray model \(model.json \+ "
                                        r"weights.pt\): FileNotFoundError"):
        ModelBundle.load(tmp_path)
    d = bundle.save(tmp_path / "cut")
    (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:1000])   # cut short
    with pytest.raises(UserError, match=rf"^{d}: not an htl-ray model"):
        ModelBundle.load(d)


def test_a_bundle_does_not_load_into_another_architecture(bundle):
    other = ModelBundle(bundle.state, {**TINY, "decoder_channels": [32, 16, 8, 8, 4]}, (32, 32))
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.build()


# ------------------------------------------------------------------ pre- and post-processing


def test_images_are_decoded_to_rgb_as_ingestion_decodes_them(tmp_path):
    Image.fromarray(np.array([[0, 128, 255]], np.uint8), "L").save(tmp_path / "grey.png")
    rgb = load_rgb(tmp_path / "grey.png")
    assert rgb.dtype == np.uint8 and rgb.tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    Image.new("RGB", (5, 3), (200, 10, 30)).save(tmp_path / "a.jpg", quality=100)
    jpeg = load_rgb(str(tmp_path / "a.jpg"))
    assert jpeg.shape == (3, 5, 3)
    assert np.abs(jpeg.astype(int) - (200, 10, 30)).max() <= 3
    with pytest.raises(RecordDefect, match=r"^missing_image: .*gone\.png: file not found$"):
        load_rgb(tmp_path / "gone.png")


def test_the_resize_to_the_training_size_takes_height_then_width():
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, :25] = 255
    small = to_input_size(rgb, (12, 20))
    assert small.shape == (12, 20, 3) and small.dtype == np.uint8
    assert (small[:, :8] == 255).all() and (small[:, -8:] == 0).all()
    same = to_input_size(rgb[:, ::-1], (30, 50))            # the right size: only made contiguous
    assert same.flags["C_CONTIGUOUS"] and np.array_equal(same, rgb[:, ::-1])


def test_a_batch_becomes_channels_first_floats_in_0_1():
    batch = np.zeros((2, 4, 5, 3), np.uint8)
    batch[1, 3, 4] = (255, 51, 0)
    x = to_tensor(batch)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x[1, :, 3, 4].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert x.sum().item() == pytest.approx(1.2)


def test_a_probability_map_is_resized_bilinearly_to_height_by_width():
    prob = np.full((8, 8), 0.25, np.float32)
    assert probability_at(prob, 8, 8) is prob
    big = probability_at(prob, 20, 30)
    assert big.shape == (20, 30) and big.dtype == np.float32 and np.allclose(big, 0.25)
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))
    wide = probability_at(ramp, 4, 16)
    assert wide.shape == (4, 16) and (np.diff(wide[0]) >= 0).all()     # still left to right
    assert wide[0, 0] < 0.1 and wide[0, -1] > 0.9


def test_the_mask_is_a_probability_above_one_half():
    assert mask_of(np.array([0.2, 0.5, 0.5001, 0.9])).tolist() == [False, False, True, True]


def test_segment_gives_each_image_its_own_size_with_known_probabilities():
    white, black = np.full((20, 30, 3), 255, np.uint8), np.zeros((7, 9, 3), np.uint8)
    half = np.zeros((16, 40, 3), np.uint8)
    half[:, :20] = 255
    probs = segment(_mean_model(), [white, black, half], (8, 8))
    assert [p.shape for p in probs] == [(20, 30), (7, 9), (16, 40)]
    assert all(p.dtype == np.float32 for p in probs)
    assert np.allclose(probs[0], _sigmoid(0.5)) and np.allclose(probs[1], _sigmoid(-0.5))
    assert probs[2][:, 0] == pytest.approx(_sigmoid(0.5), abs=1e-6)
    assert probs[2][:, -1] == pytest.approx(_sigmoid(-0.5), abs=1e-6)
    mask = mask_of(probs[2])
    assert mask[:, :16].all() and not mask[:, -16:].any()


def test_segment_matches_the_model_applied_by_hand(bundle):
    model = bundle.build()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (45, 60, 3), dtype=np.uint8),
              rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    probs = segment(model, images, bundle.input_size)
    with torch.no_grad():
        by_hand = torch.sigmoid(model(to_tensor(np.stack(
            [to_input_size(im, (32, 32)) for im in images]))))[:, 0].numpy()
    assert probs[0].shape == (45, 60)
    assert np.allclose(probs[0], probability_at(by_hand[0], 45, 60), atol=1e-6)
    assert np.allclose(probs[1], by_hand[1], atol=1e-6)             # already the model's size
    assert ((probs[0] > 0) & (probs[0] < 1)).all()
