"""htl_ray.report.figures: the report's pictures as standalone PNG data URIs. The PNGs are
decoded and their pixels counted (the HTL bars are red, the others blue), the overlay is
checked pixel by pixel, and the gallery is drawn from a real synthetic dataset (Parquet) with a
real small U-Net and its pruned copy, leaving the caller's weights untouched. No Ray."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from htl_ray.report.figures import _overlay, _plt, data_uri, gallery, score_histogram

PREFIX = "data:image/png;base64,"


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith(PREFIX)
    raw = base64.b64decode(uri[len(PREFIX):], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _pixels_near(img: np.ndarray, colour: tuple[int, int, int], tol: int = 6) -> int:
    return int((np.abs(img.astype(int) - np.asarray(colour)).max(axis=2) <= tol).sum())


RED, BLUE = (0xE4, 0x1A, 0x1C), (0x8D, 0xA0, 0xCB)
ENCODER = "mobilenet_v2"        # the gallery prunes a copy: a fifth of resnet18's weights


def test_data_uri_is_a_png_of_the_figure_and_closes_it():
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=(0, 0, 1)))
    ax.axis("off")
    number = fig.number
    img = _decode(data_uri(fig))
    assert number not in plt.get_fignums()          # closed: a long report leaks no figures
    assert 150 <= img.shape[1] <= 210 and 60 <= img.shape[0] <= 110     # 2 x 1 in at 100 dpi
    assert _pixels_near(img, (0, 0, 255), tol=2) > 0.5 * img.shape[0] * img.shape[1]


def test_score_histogram_colours_the_htl_samples_red():
    rng = np.random.default_rng(0)
    h = rng.random(200) * 0.5
    top = h >= np.quantile(h, 0.8)
    with_htl = _decode(score_histogram(pd.DataFrame({"h": h, "selected": top})))
    without = _decode(score_histogram(pd.DataFrame({"h": h, "selected": np.zeros(200, bool)})))
    assert 500 <= with_htl.shape[1] <= 800                 # 7 in wide at 100 dpi, trimmed
    # without HTL samples the red is the legend's patch only
    assert _pixels_near(with_htl, RED) > 10 * _pixels_near(without, RED)
    assert _pixels_near(without, BLUE) > _pixels_near(with_htl, BLUE)


def test_score_histogram_of_all_zero_scores_still_draws():
    img = _decode(score_histogram(pd.DataFrame({"h": np.zeros(10),
                                                "selected": [True] * 2 + [False] * 8})))
    assert _pixels_near(img, RED) > 0 and _pixels_near(img, BLUE) > 0


def test_overlay_blends_the_mask_and_draws_its_outline_in_the_colour():
    image = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    out = _overlay(image, mask, (0, 200, 0))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[~mask] == 100).all()                                 # outside untouched
    ring = mask.copy()
    ring[3:5, 3:5] = False
    assert (out[ring] == (0, 200, 0)).all()                          # outline: the colour
    assert (out[3:5, 3:5] == (55, 145, 55)).all()                   # 0.55 x + 0.45 colour
    assert (image == 100).all()                                      # the input is not changed
    assert (_overlay(image, np.zeros((8, 8), bool), (255, 0, 0)) == image).all()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from htl_ray.data.synth import synthesize

    out = tmp_path_factory.mktemp("figures") / "ds"
    synthesize(out, n=8, size=32, seed=1)
    return out


def test_gallery_draws_one_row_per_id_in_the_order_given(small_dataset):
    from model_files import small_model, small_model_config

    from htl_ray.data.schema import read_table
    from htl_ray.models import state_checksum

    ids = read_table(small_dataset)["id"].tolist()
    chosen = [ids[3], ids[0]]
    state = small_model(seed=2, encoder=ENCODER).state_dict()
    before = state_checksum(state)
    config = small_model_config(encoder=ENCODER)
    rows = gallery(small_dataset, chosen, config, state, 0.5, "l1_unstructured",
                   {chosen[0]: 0.25, chosen[1]: 0.75})
    assert [sid for sid, _ in rows] == chosen
    for _, uri in rows:
        img = _decode(uri)
        assert img.shape[1] > 2.5 * img.shape[0]          # four panels side by side
        assert _pixels_near(img, (0, 200, 0), tol=3) > 0    # the ground truth's outline
    assert state_checksum(state) == before                  # the pruned copy is a copy
    assert all(torch.is_tensor(v) for v in state.values())
    assert gallery(small_dataset, [], config, state, 0.5, "l1_unstructured", {}) == []


def test_gallery_refuses_an_unknown_pruning_method(small_dataset):
    from model_files import small_model, small_model_config

    from htl_ray.data.schema import read_table

    first = read_table(small_dataset)["id"].iloc[0]
    with pytest.raises(ValueError, match="pruning method 'magic': expected one of"):
        gallery(small_dataset, [first], small_model_config(encoder=ENCODER),
                small_model(encoder=ENCODER).state_dict(), 0.5, "magic", {first: 0.1})
