"""HTML and Markdown for the HTL report: who is hard, and how each group is segmented."""

from __future__ import annotations

import html
import math
import numbers

import pandas as pd

from htl_ray.tables import markdown_table

SECTIONS = {
    "dataset": "Dataset",
    "htl-scores": "HTL score distribution",
    "enrichment": "Which groups are enriched among HTL samples",
    "performance": "Per-group performance",
    "worst-group": "Worst-group metrics",
    "gallery": "Top HTL samples",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child,td.l{text-align:left}
tr.sig td{background:#fde8e8}.note{color:#555;font-size:.9rem}
img{max-width:100%}.kv td{text-align:left}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return html.escape(str(v))


def html_table(df: pd.DataFrame, highlight: pd.Series | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        cls = ' class="sig"' if highlight is not None and bool(highlight.iloc[i]) else ""
        cells = (f"<td>{_fmt(v)}</td>" if isinstance(v, numbers.Number)
                 else f'<td class="l">{_fmt(v)}</td>' for v in row)
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(SECTIONS[sid])}</h2>\n{body}\n</section>'


def page(title: str, header: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{header}{''.join(sections)}</body></html>")


def markdown_summary(title: str, facts: list[str], enriched: pd.DataFrame,
                     performance: pd.DataFrame, worst: pd.DataFrame) -> str:
    out = [f"# {title}", "", *[f"- {f}" for f in facts], ""]
    out += ["## Groups enriched among HTL samples", ""]
    out.append(markdown_table(enriched, ".3g") if len(enriched)
               else "No group is significantly enriched (corrected p < 0.05).")
    out += ["", "## Worst-group metrics", "", markdown_table(worst, ".3f"), "",
            "## Per-group Dice", "", markdown_table(performance, ".3f"), ""]
    return "\n".join(out)
