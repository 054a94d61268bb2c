import numpy as np
import pandas as pd
import pytest

from htl_ray.analysis.groups import add_group_columns, flat_group_metrics, group_metrics


def _table():
    return pd.DataFrame({
        "age": [25, 35, 50, 65, 80, np.nan, 40, 70],
        "sex": ["male", "female", None, "male", "female", "male", "", "female"],
        "site": ["head/neck"] * 4 + ["anterior torso"] * 4,
        "diagnosis": ["NV"] * 8,
        "area_fraction": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        "contrast": [0.1] * 4 + [np.nan] * 4,
        "dice": [0.2, 0.4, 0.6, 0.8, 1.0, 0.0, 0.5, 0.5],
    })


def test_missing_metadata_is_an_explicit_unknown_group():
    g = add_group_columns(_table())
    assert g.age_bin.tolist() == ["<30", "30-44", "45-59", "60-74", "75+", "unknown", "30-44",
                                  "60-74"]
    assert g.sex.tolist()[2] == "unknown" and g.sex.tolist()[6] == "unknown"
    assert g.size_quartile.tolist() == ["sizeQ1"] * 2 + ["sizeQ2"] * 2 + ["sizeQ3"] * 2 + \
        ["sizeQ4"] * 2
    assert (g.contrast_quartile[4:] == "unknown").all()


def test_group_means_counts_and_worst_group():
    g = add_group_columns(_table())
    t = group_metrics(g, "dice").set_index(["attribute", "group"])
    assert t.loc[("sex", "male"), "count"] == 3
    assert t.loc[("sex", "male"), "mean"] == pytest.approx((0.2 + 0.8 + 0.0) / 3)
    assert t.loc[("sex", "unknown"), "mean"] == pytest.approx((0.6 + 0.5) / 2)
    flat = flat_group_metrics(g, "dice", "val")
    assert flat["val/group/site/head-neck/dice"] == pytest.approx(0.5)
    assert flat["val/worst_group/sex/dice"] == pytest.approx(1 / 3)    # unknown is not a group
    assert flat["val/group/age_bin/75plus/dice"] == 1.0
