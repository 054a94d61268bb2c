"""AUROC / AURC of failure detectors and the review threshold, on known cases."""

import numpy as np
import pytest

from htl_ray.analysis.failure_detection import (
    aurc,
    compare_risks,
    flag_rates,
    optimal_aurc,
    youden_threshold,
)


def test_aurc_by_hand():
    loss = np.array([0.0, 0.2, 0.4, 1.0])
    # accepting in order of loss: selective risks 0, 0.1, 0.2, 0.4 → mean 0.175
    assert aurc(np.array([0.1, 0.2, 0.3, 0.4]), loss) == pytest.approx(0.175)
    assert optimal_aurc(loss) == pytest.approx(0.175)
    # the reverse order: 1, 0.7, 0.5333, 0.4 → mean 0.6583
    assert aurc(np.array([0.4, 0.3, 0.2, 0.1]), loss) == pytest.approx(
        np.mean([1.0, 0.7, 1.6 / 3, 0.4]))
    # one tie of everything: every coverage is accepted at once, the mean loss
    assert aurc(np.zeros(4), loss) == pytest.approx(loss.mean())


def test_compare_risks_ranks_a_perfect_detector_above_noise():
    rng = np.random.default_rng(0)
    iou = rng.uniform(0.3, 1.0, 300)
    perfect, noise = 1 - iou, rng.random(300)
    table = compare_risks({"perfect": perfect, "noise": noise}, iou, n_boot=200).set_index("risk")
    assert table.loc["perfect", "auroc"] == pytest.approx(1.0)
    assert table.loc["perfect", "aurc"] == pytest.approx(table.attrs["optimal_aurc"])
    assert 0.35 < table.loc["noise", "auroc"] < 0.65
    assert table.loc["noise", "aurc"] > table.loc["perfect", "aurc"]
    for name in ("perfect", "noise"):
        r = table.loc[name]
        assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]
        assert r["aurc_lo"] <= r["aurc"] <= r["aurc_hi"]
    assert table.attrs["failed"] == int((iou < 0.65).sum())


def test_youden_threshold_separates_and_flag_rates_report_it():
    risk = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    failed = np.array([False, False, False, True, True, True])
    t = youden_threshold(risk, failed)
    assert t == 0.7
    assert flag_rates(risk, failed, t) == {"flagged": 0.5, "sensitivity": 1.0, "specificity": 1.0}
    with pytest.raises(ValueError, match="both"):
        youden_threshold(risk, np.zeros(6, dtype=bool))
