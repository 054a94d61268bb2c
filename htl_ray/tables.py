"""Markdown tables from DataFrames, without a tabulate dependency (sweep and compare output)."""

from __future__ import annotations

import math

import pandas as pd


def _cell(value, floatfmt: str) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, floatfmt)
    if value is None:
        return ""
    return str(value).replace("|", "\\|")


def short_value(value, digits: int = 4) -> str:
    """A parameter value as a reader wants it in a name or label: 2.4208472637 → 2.421 (also
    from its logged text, "2.4208472637"); integers, words and lists as written, no spaces."""
    if isinstance(value, str) and ("." in value or "e" in value.lower()):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and math.isfinite(value):
        return format(value, f".{digits}g")
    return str(value).replace(" ", "")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """GitHub-flavoured Markdown; NaN cells are blank; numbers are right-aligned."""
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines)
