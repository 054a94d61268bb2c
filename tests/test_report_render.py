"""htl_ray.report.render: the report's HTML and Markdown pieces, on hand-made tables — number
formatting (small, large, NaN, zero), escaping of anything a group name or a path may hold, the
highlighted rows, section titles and order, the standalone page, and the Markdown summary with
and without enriched groups. Pure functions: no model, no Ray, no files."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from htl_ray.report.render import (
    CSS,
    SECTIONS,
    _fmt,
    html_table,
    markdown_summary,
    page,
    section,
)


class _Cells(HTMLParser):
    """Rows of a table as [(tag, class, text)], and every tag seen."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self.row_classes = [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(a.get("class"))
        if tag in ("td", "th"):
            self._cell = [tag, a.get("class"), ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data


def _parse(text: str) -> _Cells:
    p = _Cells()
    p.feed(text)
    return p


@pytest.mark.parametrize("value, text", [
    (0.5, "0.500"), (0.12345, "0.123"), (0.0, "0.000"), (1e-4, "1.00e-04"),
    (-0.00049, "-4.90e-04"), (12345.678, "1.23e+04"), (9999.0, "9999.000"),
    (np.float64(0.25), "0.250"), (math.nan, ""), (3, "3"), ("<b>&", "&lt;b&gt;&amp;"),
])
def test_fmt_shows_three_decimals_scientific_outside_their_range_and_escapes_text(value, text):
    assert _fmt(value) == text


def test_html_table_formats_numbers_right_aligned_text_left_and_marks_highlighted_rows():
    df = pd.DataFrame({"group <i>": ["head/neck", "a&b", "x"], "dice": [0.81234, np.nan, 2e-5],
                       "n": [12, 3, 40]}, index=[10, 20, 30])
    highlight = pd.Series([False, True, False])          # positional, whatever df's index
    p = _parse(html_table(df, highlight))
    assert p.rows[0] == [("th", None, "group <i>"), ("th", None, "dice"), ("th", None, "n")]
    assert p.rows[1] == [("td", "l", "head/neck"), ("td", None, "0.812"), ("td", None, "12")]
    assert p.rows[2] == [("td", "l", "a&b"), ("td", None, ""), ("td", None, "3")]
    assert p.rows[3] == [("td", "l", "x"), ("td", None, "2.00e-05"), ("td", None, "40")]
    assert p.row_classes == [None, None, "sig", None]
    assert "i" not in p.tags                       # the column name's markup was escaped
    assert _parse(html_table(df)).row_classes == [None] * 4


def test_html_table_of_an_empty_frame_has_its_header_only():
    text = html_table(pd.DataFrame(columns=["attribute", "group"]))
    assert text == ("<table><thead><tr><th>attribute</th><th>group</th></tr></thead>"
                    "<tbody></tbody></table>")


def test_sections_carry_their_id_and_title_and_an_unknown_id_is_refused():
    assert section("worst-group", "<p>x</p>") == (
        '<section id="worst-group"><h2>Worst-group metrics</h2>\n<p>x</p>\n</section>')
    assert list(SECTIONS) == ["dataset", "htl-scores", "enrichment", "performance",
                              "worst-group", "gallery"]
    with pytest.raises(KeyError):
        section("no-such-section", "")


def test_page_is_one_standalone_document_with_the_sections_in_the_order_given():
    body = [section(s, f"<p>{s}</p>") for s in ("gallery", "dataset")]
    text = page("HTL report: <run> & co", "<p class=note>header</p>", body)
    assert text.startswith('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">')
    assert "<title>HTL report: &lt;run&gt; &amp; co</title>" in text
    assert "<h1>HTL report: &lt;run&gt; &amp; co</h1><p class=note>header</p>" in text
    assert f"<style>{CSS}</style>" in text and "<link" not in text and "<script" not in text
    assert text.index('id="gallery"') < text.index('id="dataset"')
    assert text.endswith("</section></body></html>")


def _frames():
    worst = pd.DataFrame({"attribute": ["site"], "model": ["run"], "dice": [0.41236]})
    perf = pd.DataFrame({"group": ["head|neck"], "dice": [0.5], "n": [4]})
    return worst, perf


def test_markdown_summary_with_no_enriched_group_says_so():
    worst, perf = _frames()
    md = markdown_summary("Run x", ["fact one", "fact two"], pd.DataFrame(), perf, worst)
    assert md.split("\n") == [
        "# Run x", "", "- fact one", "- fact two", "",
        "## Groups enriched among HTL samples", "",
        "No group is significantly enriched (corrected p < 0.05).", "",
        "## Worst-group metrics", "",
        "| attribute | model | dice |", "|---|---|---:|", "| site | run | 0.412 |", "",
        "## Per-group Dice", "",
        "| group | dice | n |", "|---|---:|---:|", "| head\\|neck | 0.500 | 4 |", ""]


def test_markdown_summary_lists_enriched_groups_with_three_significant_digits():
    worst, perf = _frames()
    enriched = pd.DataFrame({"group": ["site=head/neck"], "odds_ratio": [4.56789],
                             "p_adjusted": [0.000123456]})
    md = markdown_summary("Run x", [], enriched, perf, worst)
    lines = md.splitlines()
    start = lines.index("## Groups enriched among HTL samples")
    assert lines[start + 2:start + 5] == ["| group | odds_ratio | p_adjusted |",
                                          "|---|---:|---:|",
                                          "| site=head/neck | 4.57 | 0.000123 |"]
    assert "No group is significantly enriched" not in md
    assert lines[:3] == ["# Run x", "", ""]                # no facts: no bullets
