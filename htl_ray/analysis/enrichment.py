"""Which groups are over-represented among HTL samples, and how the HTL set moves.

Per group g: the HTL rate in g against the base rate over all samples, the odds ratio of
being HTL in g versus outside g with a Woolf (log) 95% interval (Haldane +0.5 when a cell is
0), and a two-sided Fisher exact p-value. p-values are corrected over every group tested in one
call (Holm by default, Benjamini–Hochberg on request), because a report tests dozens of groups
and some would pass p < 0.05 by chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from htl_ray.analysis.metric_frame import group_labels


def _unsort(sorted_values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(sorted_values)
    out[order] = sorted_values
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error): the running maximum of
    (m − rank)·p over p sorted ascending."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    steps = (len(p) - np.arange(len(p))) * p[order]
    return _unsort(np.maximum.accumulate(np.minimum(steps, 1.0)), order)


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate): the running minimum, from
    the largest p down, of p·m/rank."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    steps = p[order] * len(p) / (np.arange(len(p)) + 1)
    return _unsort(np.minimum(np.minimum.accumulate(steps[::-1])[::-1], 1.0), order)


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def odds_ratio_ci(a: int, b: int, c: int, d: int, level: float = 0.95
                  ) -> tuple[float, float, float]:
    """Odds ratio of the 2×2 table [[a, b], [c, d]] with its Woolf interval."""
    from scipy import stats

    if min(a, b, c, d) == 0:
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    ratio = (a * d) / (b * c)
    z = stats.norm.ppf(0.5 + level / 2)
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    return ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se)


def enrichment(df: pd.DataFrame, attributes: Sequence[str | Sequence[str]],
               selected: str = "selected", correction: str = "holm",
               level: float = 0.95) -> pd.DataFrame:
    """One row per (attribute, group): counts, HTL rate, base rate, rate ratio, odds ratio with
    CI, Fisher p and corrected p. `attributes` items may be tuples (intersectional groups)."""
    from scipy import stats

    if selected not in df.columns:
        raise KeyError(f"column {selected!r} (HTL membership) not in the table")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction: expected one of {sorted(CORRECTIONS)}, got {correction!r}")
    is_htl = df[selected].astype(bool).to_numpy()
    n, n_htl = len(df), int(is_htl.sum())
    base = n_htl / n if n else math.nan
    rows = []
    for attr in attributes:
        labels = group_labels(df, attr).to_numpy()
        name = attr if isinstance(attr, str) else " × ".join(attr)
        for group in sorted(set(labels)):
            inside = labels == group
            a = int((is_htl & inside).sum())
            b = int(inside.sum()) - a
            c = n_htl - a
            d = n - n_htl - b
            ratio, lo, hi = odds_ratio_ci(a, b, c, d, level)
            p = float(stats.fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue)
            rate = a / (a + b) if a + b else math.nan
            rows.append({"attribute": name, "group": group, "count": a + b, "htl": a,
                         "htl_rate": rate, "base_rate": base,
                         "rate_ratio": rate / base if base else math.nan,
                         "odds_ratio": ratio, "or_ci_low": lo, "or_ci_high": hi, "p": p})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_adjusted"] = CORRECTIONS[correction](out["p"].to_numpy())
        out["correction"] = correction
    return out


def htl_set_evolution(versions: dict[int, pd.DataFrame], selected: str = "selected"
                      ) -> pd.DataFrame:
    """Per refresh: HTL set size, overlap with the previous set, Jaccard, churn (the share of
    the current set that is new), how many entered and left."""
    rows, prev = [], None
    for v in sorted(versions):
        t = versions[v]
        cur = set(t.loc[t[selected].astype(bool), "id"].astype(str))
        row = {"version": v, "size": len(cur)}
        if prev is not None:
            inter = len(cur & prev)
            union = len(cur | prev)
            row.update({"overlap": inter, "jaccard": inter / union if union else math.nan,
                        "churn": 1 - inter / len(cur) if cur else math.nan,
                        "entered": len(cur - prev), "left": len(prev - cur)})
        rows.append(row)
        prev = cur
    return pd.DataFrame(rows, columns=["version", "size", "overlap", "jaccard", "churn",
                                       "entered", "left"])
