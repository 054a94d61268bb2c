"""Labeled subsets are exact, stratified and reproducible; boxes are the masks' tight boxes."""

import numpy as np
import pytest

from htl_ray.supervision.labels import (
    box_masks,
    choose_labeled,
    jitter_boxes,
    mask_boxes,
    size_strata,
)

IDS = np.array([f"ISIC_{i:07d}" for i in range(403)])
AREAS = np.random.default_rng(0).random(403) ** 2


@pytest.mark.parametrize("f", [0.05, 0.25, 0.5, 0.9, 1.0])
def test_label_fraction_is_exact(f):
    chosen = choose_labeled(IDS, size_strata(AREAS), f, seed=3)
    assert chosen.sum() == round(f * len(IDS))


def test_label_choice_is_reproducible_per_seed_and_independent_of_row_order():
    strata = size_strata(AREAS)
    a = choose_labeled(IDS, strata, 0.25, seed=1)
    assert np.array_equal(a, choose_labeled(IDS, strata, 0.25, seed=1))
    assert not np.array_equal(a, choose_labeled(IDS, strata, 0.25, seed=2))
    perm = np.random.default_rng(9).permutation(len(IDS))
    shuffled = choose_labeled(IDS[perm], strata[perm], 0.25, seed=1)
    assert set(IDS[perm][shuffled]) == set(IDS[a])


def test_label_choice_is_stratified_by_lesion_size():
    strata = size_strata(AREAS)
    assert sorted(np.bincount(strata).tolist()) == [100, 101, 101, 101]
    chosen = choose_labeled(IDS, strata, 0.25, seed=0)
    per_stratum = np.bincount(strata[chosen], minlength=4)
    assert per_stratum.max() - per_stratum.min() <= 1          # 25 or 26 from every quartile
    with pytest.raises(ValueError, match="label fraction"):
        choose_labeled(IDS, strata, 0.0, seed=0)


def test_boxes_are_tight_and_render_back():
    m = np.zeros((2, 8, 10), dtype=np.uint8)
    m[0, 2:5, 3:7] = 1
    m[0, 4, 8] = 1                                             # a stray pixel widens the box
    boxes = mask_boxes(m)
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 0, 0, 0]]      # empty mask: empty box
    rendered = box_masks(boxes, 8, 10)
    assert rendered[0].sum() == 6 * 3 and rendered[0, 2:5, 3:9].all() and rendered[1].sum() == 0


def test_jitter_moves_boxes_within_the_image_and_sigma_zero_is_identity():
    boxes = np.array([[10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 64.0, 64.0], [0, 0, 0, 0]])
    rng = np.random.default_rng(0)
    assert np.array_equal(jitter_boxes(boxes, 0.0, 64, 64, rng), boxes)
    moved = np.stack([jitter_boxes(boxes, 0.1, 64, 64, np.random.default_rng(s))
                      for s in range(200)])
    assert (moved[:, :2, [0, 1]] >= 0).all() and (moved[:, :2, [2, 3]] <= 64).all()
    assert (moved[:, :2, 2] > moved[:, :2, 0]).all() and (moved[:, :2, 3] > moved[:, :2, 1]).all()
    assert (moved[:, 2] == 0).all()                             # no box stays no box
    # σ = 0.1 of a 20-px-wide box: corners move by ~2 px on average (not 0, not 20)
    assert 1.0 < np.abs(moved[:, 0, 0] - 10).mean() < 3.0
