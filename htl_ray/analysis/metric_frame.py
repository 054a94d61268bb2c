"""Per-group metrics in the conventions of fairlearn's `MetricFrame`, with bootstrap CIs.

`overall`, `by_group`, `group_min()`, `group_max()`, `difference()` (max − min) and `ratio()`
(min / max) mean what they mean in fairlearn; counts travel with every group. Groups come from
one attribute or from the intersection of several (`("sex", "age_bin")` → groups like
`female × 45-59`). Missing values are the explicit group `unknown` (never dropped); a group
listed in `categories` that has no member is reported with count 0 and NaN metrics rather than
silently absent, and is left out of min/max/difference/ratio.

Confidence intervals are percentile bootstrap intervals over images, resampled within each
group, with a seeded generator: the same seed gives the same intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from htl_ray.analysis.groups import UNKNOWN

SEP = " × "


def group_labels(df: pd.DataFrame, attributes: str | Sequence[str]) -> pd.Series:
    """One label per row: the attribute's value, or the values of several joined by ' × '."""
    attrs = [attributes] if isinstance(attributes, str) else list(attributes)
    missing = [a for a in attrs if a not in df.columns]
    if missing:
        raise KeyError(f"group attribute(s) {missing} not in the table "
                       f"(columns: {', '.join(map(str, df.columns))})")
    parts = [df[a].astype(object).where(df[a].notna() & (df[a].astype(str) != ""), UNKNOWN)
             .astype(str) for a in attrs]
    out = parts[0]
    for p in parts[1:]:
        out = out + SEP + p
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int, level: float, rng: np.random.Generator
                 ) -> tuple[float, float]:
    """Percentile interval of the mean; NaN for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or n_boot <= 0:
        return math.nan, math.nan
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class GroupMetricFrame:
    """Mean of `metric` per group of `attributes`, with counts and bootstrap CIs."""

    metric: str
    attributes: tuple[str, ...]
    overall: float
    overall_ci: tuple[float, float]
    by_group: pd.DataFrame          # index: group label; columns: count, mean, ci_low, ci_high

    def group_min(self) -> float:
        return float(self._present()["mean"].min())

    def group_max(self) -> float:
        return float(self._present()["mean"].max())

    def difference(self) -> float:
        return self.group_max() - self.group_min()

    def ratio(self) -> float:
        mx = self.group_max()
        return self.group_min() / mx if mx else math.nan

    def worst_group(self) -> str:
        return str(self._present()["mean"].idxmin())

    def _present(self, include_unknown: bool = False) -> pd.DataFrame:
        t = self.by_group[self.by_group["count"] > 0]
        if not include_unknown:
            known = [UNKNOWN not in str(g).split(SEP) for g in t.index]
            if any(known):
                t = t[known]
        return t

    def summary(self) -> dict[str, float | str]:
        return {"overall": self.overall, "group_min": self.group_min(),
                "group_max": self.group_max(), "difference": self.difference(),
                "ratio": self.ratio(), "worst_group": self.worst_group()}


def metric_frame(df: pd.DataFrame, metric: str, attributes: str | Sequence[str], *,
                 categories: Sequence[str] | None = None, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> GroupMetricFrame:
    """Group `df[metric]` by `attributes` (one column, or several for intersectional groups).

    Min/max/difference/ratio skip empty groups and, unless only `unknown` groups exist, the
    `unknown` ones (their members share no attribute value)."""
    if metric not in df.columns:
        raise KeyError(f"metric column {metric!r} not in the table")
    attrs = (attributes,) if isinstance(attributes, str) else tuple(attributes)
    labels = group_labels(df, attrs)
    rng = np.random.default_rng(seed)
    values = pd.to_numeric(df[metric], errors="coerce")
    rows = {}
    order = list(dict.fromkeys([*(categories or []), *sorted(labels.unique())]))
    for group in order:
        v = values[labels == group].dropna().to_numpy()
        lo, hi = bootstrap_ci(v, n_boot, level, rng)
        rows[group] = {"count": len(v), "mean": float(v.mean()) if len(v) else math.nan,
                       "ci_low": lo, "ci_high": hi}
    by_group = pd.DataFrame.from_dict(rows, orient="index")
    by_group.index.name = SEP.join(attrs)
    all_v = values.dropna().to_numpy()
    return GroupMetricFrame(metric=metric, attributes=attrs, overall=float(all_v.mean()),
                            overall_ci=bootstrap_ci(all_v, n_boot, level, rng),
                            by_group=by_group)
