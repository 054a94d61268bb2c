"""Demographic and implicit groups, and per-group metric summaries.

Missing metadata is its own explicit group, `unknown`, never dropped. Implicit groups (lesion
size and lesion/skin contrast quartiles) are computed on the table being analysed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNKNOWN = "unknown"
AGE_BINS = (0, 30, 45, 60, 75, 200)
AGE_LABELS = ("<30", "30-44", "45-59", "60-74", "75+")
GROUP_ATTRIBUTES = ("age_bin", "sex", "site", "diagnosis", "size_quartile", "contrast_quartile")


def _quartile(values: pd.Series, prefix: str) -> pd.Series:
    out = pd.Series(UNKNOWN, index=values.index, dtype=object)
    ok = values.notna()
    if ok.sum() >= 4 and values[ok].nunique() >= 4:
        q = pd.qcut(values[ok].rank(method="first"), 4, labels=[f"{prefix}Q{i}" for i in
                                                                range(1, 5)])
        out[ok] = q.astype(str)
    elif ok.any():
        out[ok] = f"{prefix}Q1"
    return out


def add_group_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with one categorical column per GROUP_ATTRIBUTES entry."""
    out = df.copy()
    age = pd.to_numeric(out.get("age", pd.Series(np.nan, index=out.index)), errors="coerce")
    bins = pd.cut(age, AGE_BINS, right=False, labels=AGE_LABELS)
    out["age_bin"] = bins.astype(object).where(bins.notna(), UNKNOWN)
    for col in ("sex", "site", "diagnosis"):
        s = out.get(col, pd.Series(None, index=out.index, dtype=object))
        out[col] = s.astype(object).where(s.notna() & (s.astype(str) != ""), UNKNOWN)
    out["size_quartile"] = _quartile(out.get("area_fraction", pd.Series(np.nan, index=out.index)),
                                     "size")
    out["contrast_quartile"] = _quartile(out.get("contrast", pd.Series(np.nan, index=out.index)),
                                         "contrast")
    return out


def group_metrics(df: pd.DataFrame, metric: str,
                  attributes: tuple[str, ...] = GROUP_ATTRIBUTES) -> pd.DataFrame:
    """Long table: attribute, group, count, mean of `metric` — one row per group."""
    rows = []
    for attr in attributes:
        if attr not in df:
            continue
        for group, sub in df.groupby(attr, dropna=False, sort=True):
            rows.append({"attribute": attr, "group": str(group), "count": len(sub),
                         "mean": float(sub[metric].mean())})
    return pd.DataFrame(rows, columns=["attribute", "group", "count", "mean"])


def metric_key(name: str) -> str:
    """MLflow-safe metric name fragment (no '/' inside group values like 'head/neck')."""
    name = name.replace("+", "plus").replace("<", "lt")
    return "".join(c if c.isalnum() or c in "-_. " else "-" for c in name).replace(" ", "_")


def flat_group_metrics(df: pd.DataFrame, metric: str, prefix: str) -> dict[str, float]:
    """{prefix/group/<attr>/<group>/<metric>: mean, prefix/worst_group/<attr>/<metric>: min}.

    The worst group ignores `unknown`, whose members share no attribute."""
    table = group_metrics(df, metric)
    out = {}
    for _, r in table.iterrows():
        out[f"{prefix}/group/{r.attribute}/{metric_key(r.group)}/{metric}"] = r["mean"]
    for attr, sub in table.groupby("attribute"):
        known = sub[sub.group != UNKNOWN]
        if len(known):
            out[f"{prefix}/worst_group/{attr}/{metric}"] = float(known["mean"].min())
    return out
