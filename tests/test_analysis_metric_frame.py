"""Group metrics on a fixture with known values, fairlearn MetricFrame conventions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from htl_ray.analysis.metric_frame import bootstrap_ci, group_labels, metric_frame


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame({
        "dice": [0.9, 0.8, 0.7, 0.5, 0.3, 0.6, 1.0],
        "sex": ["female", "female", "male", "male", "male", None, ""],
        "age_bin": ["<30", "30-44", "<30", "30-44", "30-44", "<30", "<30"],
    })


def test_by_group_overall_min_max_difference_ratio(table):
    mf = metric_frame(table, "dice", "sex", categories=["female", "male", "other"], n_boot=200)
    g = mf.by_group
    assert mf.overall == pytest.approx(np.mean(table["dice"]))
    assert g.loc["female", "mean"] == pytest.approx(0.85) and g.loc["female", "count"] == 2
    assert g.loc["male", "mean"] == pytest.approx(0.5) and g.loc["male", "count"] == 3
    # missing and empty metadata are one explicit `unknown` group, not dropped
    assert g.loc["unknown", "count"] == 2 and g.loc["unknown", "mean"] == pytest.approx(0.8)
    # a listed group with no member is reported empty
    assert g.loc["other", "count"] == 0 and math.isnan(g.loc["other", "mean"])
    assert g["count"].sum() == len(table)
    # min/max over the known, non-empty groups
    assert mf.group_min() == pytest.approx(0.5) and mf.group_max() == pytest.approx(0.85)
    assert mf.difference() == pytest.approx(0.35)
    assert mf.ratio() == pytest.approx(0.5 / 0.85)
    assert mf.worst_group() == "male"


def test_intersectional_groups(table):
    mf = metric_frame(table, "dice", ("sex", "age_bin"), n_boot=0)
    g = mf.by_group
    assert g.loc["male × 30-44", "mean"] == pytest.approx(0.4)
    assert g.loc["male × 30-44", "count"] == 2
    assert g.loc["female × <30", "count"] == 1
    assert g.loc["unknown × <30", "count"] == 2
    assert mf.worst_group() == "male × 30-44"
    assert g["count"].sum() == len(table)


def test_bootstrap_cis_are_seeded_and_cover_the_mean(table):
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"dice": rng.random(200), "sex": rng.choice(["female", "male"], 200)})
    a = metric_frame(big, "dice", "sex", seed=1, n_boot=500)
    b = metric_frame(big, "dice", "sex", seed=1, n_boot=500)
    c = metric_frame(big, "dice", "sex", seed=2, n_boot=500)
    pd.testing.assert_frame_equal(a.by_group, b.by_group)
    assert not a.by_group.equals(c.by_group)
    male = a.by_group.loc["male"]
    # about mean ± 1.96·sd/√n for a uniform(0, 1) metric
    half = 1.96 * big.dice[big.sex == "male"].std() / np.sqrt(male["count"])
    assert male.ci_low < male["mean"] < male.ci_high
    assert (male.ci_high - male.ci_low) / 2 == pytest.approx(half, rel=0.2)
    small = metric_frame(table, "dice", "sex", n_boot=500).by_group.loc["male"]
    assert 0.3 <= small.ci_low and small.ci_high <= 0.7        # within the data's range
    lo, hi = bootstrap_ci(np.array([0.5]), 100, 0.95, np.random.default_rng(0))
    assert math.isnan(lo) and math.isnan(hi)                    # one value: no interval
    lo, hi = bootstrap_ci(np.full(50, 0.25), 100, 0.95, np.random.default_rng(0))
    assert lo == hi == 0.25


def test_unknown_attribute_is_a_clear_error(table):
    with pytest.raises(KeyError, match="'site'"):
        group_labels(table, ["sex", "site"])
    with pytest.raises(KeyError, match="metric column 'iou'"):
        metric_frame(table, "iou", "sex")
