"""Metric values against hand-computed cases (ISIC 2018 conventions)."""

import numpy as np
import pytest

from htl_ray.metrics import binarize_255, mask_iou, per_image_metrics, summarize


def _masks(*pairs):
    return (np.stack([p for p, _ in pairs]), np.stack([g for _, g in pairs]))


def test_hand_computed_case():
    gt = np.zeros((4, 4), bool)
    gt[0, :4] = True                       # 4 lesion pixels
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True                     # 2 true positives
    pred[1, :2] = True                     # 2 false positives
    m = per_image_metrics(pred[None], gt[None])
    # tp=2 fp=2 fn=2 tn=10
    assert m["iou"][0] == pytest.approx(2 / 6)
    assert m["dice"][0] == pytest.approx(4 / 8)
    assert m["thresholded_jaccard"][0] == 0.0          # IoU 0.333 < 0.65 counts as 0
    assert m["sensitivity"][0] == pytest.approx(0.5)
    assert m["specificity"][0] == pytest.approx(10 / 12)


def test_threshold_keeps_iou_at_or_above_065_and_mean_over_images():
    gt = np.zeros((2, 10, 10), bool)
    gt[:, :, :5] = True                                 # 50 pixels each
    pred = gt.copy()
    pred[0, :, 5] = True                                # +10 fp → IoU 50/60 = 0.8333
    pred[1, :, 3:5] = False                             # −20 tp → IoU 30/50 = 0.6
    m = per_image_metrics(pred, gt)
    np.testing.assert_allclose(m["iou"], [50 / 60, 0.6])
    np.testing.assert_allclose(m["thresholded_jaccard"], [50 / 60, 0.0])
    np.testing.assert_allclose(m["dice"], [100 / 110, 60 / 80])
    s = summarize(m)
    assert s["thresholded_jaccard"] == pytest.approx((50 / 60) / 2)
    assert s["iou"] == pytest.approx((50 / 60 + 0.6) / 2)


def test_empty_vs_empty_is_perfect_and_empty_gt_with_prediction_is_zero():
    empty = np.zeros((1, 8, 8), bool)
    m = per_image_metrics(empty, empty)
    for k in ("dice", "iou", "thresholded_jaccard", "sensitivity", "specificity"):
        assert m[k][0] == 1.0, k
    pred = empty.copy()
    pred[0, 0, :4] = True
    m = per_image_metrics(pred, empty)
    assert m["dice"][0] == 0.0 and m["iou"][0] == 0.0
    assert m["sensitivity"][0] == 1.0                   # nothing to find: vacuous
    assert m["specificity"][0] == pytest.approx(60 / 64)


def test_challenge_binarisation_is_strictly_above_128():
    arr = np.array([0, 127, 128, 129, 255], np.uint8)
    assert binarize_255(arr).tolist() == [False, False, False, True, True]


def test_mask_iou_matches_per_image_iou():
    import torch

    rng = np.random.default_rng(0)
    a = rng.random((5, 16, 16)) > 0.5
    b = rng.random((5, 16, 16)) > 0.5
    np.testing.assert_allclose(mask_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy(),
                               per_image_metrics(a, b)["iou"])


def test_auroc_hand_computed_with_ties():
    from htl_ray.metrics import auroc

    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)   # ties count half
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert np.isnan(auroc([0.1, 0.2], [0, 0]))
