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


def test_short_value_shortens_numbers_and_their_logged_text_only():
    from htl_ray.tables import short_value

    assert short_value(2.4208472637, 3) == "2.42"
    assert short_value("2.4208472637") == "2.421"                  # an MLflow param's text
    assert short_value("1.0") == "1" and short_value(3) == "3"
    assert short_value("erm") == "erm" and short_value("reweight") == "reweight"
    assert short_value([0.3, 0.6]) == "[0.3,0.6]"
