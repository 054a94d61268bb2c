"""HTL enrichment: a planted 3× over-representation is found, a null case is not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from htl_ray.analysis.enrichment import (
    benjamini_hochberg,
    enrichment,
    holm,
    htl_set_evolution,
    odds_ratio_ci,
)


def _planted(n: int = 1000, rate: float = 0.1, factor: float = 3.0, seed: int = 0):
    """Site `head-neck` (20% of samples) is HTL at 3× the rate of everyone else."""
    rng = np.random.default_rng(seed)
    site = rng.choice(["head-neck", "torso", "lower_extremity", "upper_extremity"], size=n,
                      p=[0.2, 0.3, 0.25, 0.25])
    sex = rng.choice(["female", "male", None], size=n, p=[0.45, 0.45, 0.1])
    p = np.where(site == "head-neck", rate * factor, rate)
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "site": site, "sex": sex,
                         "selected": rng.random(n) < p})


def test_planted_three_fold_group_is_detected_after_correction():
    df = _planted()
    out = enrichment(df, ["site", "sex", ("sex", "site")], correction="holm")
    hn = out[(out.attribute == "site") & (out.group == "head-neck")].iloc[0]
    assert hn.rate_ratio > 2.0 and hn.odds_ratio > 2.5 and hn.or_ci_low > 1.0
    assert hn.p_adjusted < 0.01
    others = out[(out.attribute == "sex")]
    assert (others.p_adjusted > 0.05).all()                    # sex is not enriched
    assert set(out[out.attribute == "sex"].group) == {"female", "male", "unknown"}
    assert out[out.attribute == "site"]["count"].sum() == len(df)


def test_null_case_is_not_detected():
    df = _planted(factor=1.0, seed=1)
    out = enrichment(df, ["site", "sex"], correction="bh")
    assert (out.p_adjusted >= 0.01).all()
    assert out["correction"].eq("bh").all()


def test_fisher_odds_ratio_and_corrections_match_hand_values():
    df = pd.DataFrame({"g": ["a"] * 10 + ["b"] * 30,
                       "selected": [True] * 6 + [False] * 4 + [True] * 6 + [False] * 24})
    row = enrichment(df, ["g"]).set_index("group").loc["a"]
    assert (row.htl, row["count"], row.htl_rate, row.base_rate) == (6, 10, 0.6, 0.3)
    assert row.odds_ratio == pytest.approx(6 * 24 / (4 * 6))
    assert row.p == pytest.approx(stats.fisher_exact([[6, 4], [6, 24]]).pvalue)
    r, lo, hi = odds_ratio_ci(0, 10, 5, 10)                    # Haldane +0.5 on a zero cell
    assert r == pytest.approx(0.5 * 10.5 / (10.5 * 5.5)) and lo < r < hi
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_htl_set_evolution_overlap_and_churn():
    def version(selected):
        return pd.DataFrame({"id": list("abcdef"), "selected": [c in selected for c in "abcdef"]})

    evo = htl_set_evolution({1: version("abc"), 2: version("bcd"), 3: version("bcd")})
    assert evo["size"].tolist() == [3, 3, 3]
    v2 = evo.set_index("version").loc[2]
    assert (v2.overlap, v2.entered, v2.left) == (2, 1, 1)
    assert v2.jaccard == pytest.approx(0.5) and v2.churn == pytest.approx(1 / 3)
    assert evo.set_index("version").loc[3, "churn"] == 0.0
