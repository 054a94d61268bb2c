"""Markdown tables without tabulate."""

import math

import pandas as pd

from htl_ray.tables import markdown_table


def test_markdown_table_aligns_numbers_blanks_nan_and_escapes_pipes():
    df = pd.DataFrame({"name": ["a|b", "c"], "value": [0.123456, math.nan], "n": [3, 4]})
    assert markdown_table(df, ".3f").splitlines() == [
        "| name | value | n |",
        "|---|---:|---:|",
        "| a\\|b | 0.123 | 3 |",
        "| c |  | 4 |",
    ]
