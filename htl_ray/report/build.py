"""`htl-ray report RUN [--baseline RUN]`: the HTL report of one run, as HTML and Markdown.

Sections: dataset summary; HTL score distribution (and how the HTL set moved across
refreshes); enrichment of every group among HTL samples (odds ratio, Fisher p, Holm-corrected);
per-group validation Dice with bootstrap CIs — beside the baseline's, with the paired
difference, when `--baseline` is given; worst-group metrics; a gallery of the top HTL samples
with the ground truth and the dense and pruned predictions. Both files are logged to the run's
MLflow run under `report/`.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from htl_ray.analysis.enrichment import enrichment, htl_set_evolution
from htl_ray.analysis.groups import GROUP_ATTRIBUTES
from htl_ray.analysis.metric_frame import metric_frame
from htl_ray.checkpoints import load_checkpoint
from htl_ray.report.figures import gallery, score_histogram
from htl_ray.report.inputs import RunInputs, load_run
from htl_ray.report.render import html_table, markdown_summary, page, section

logger = logging.getLogger(__name__)

INTERSECTIONS = (("sex", "age_bin"),)
SIGNIFICANT = 0.05


@dataclass
class Report:
    html_path: Path
    markdown_path: Path
    enrichment: pd.DataFrame
    performance: pd.DataFrame
    worst: pd.DataFrame


def _attrs():
    return [*GROUP_ATTRIBUTES, *INTERSECTIONS]


def _name(attr) -> str:
    return attr if isinstance(attr, str) else " × ".join(attr)


def dataset_section(run: RunInputs) -> str:
    d = run.dataset
    counts = d.groupby("split").size().reindex(["train", "val", "test"]).fillna(0).astype(int)
    kv = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in [
        ("dataset", html.escape(str(run.config.data.path))),
        ("images per split", ", ".join(f"{s} {n}" for s, n in counts.items())),
        ("metadata missing", ", ".join(
            f"{c} {d[c].isna().mean():.0%}" for c in ("age", "sex", "site", "diagnosis")
            if c in d)),
    ])
    tr = run.htl
    dist = [{"attribute": a, "group": g, "training images": n, "share": n / len(tr)}
            for a in GROUP_ATTRIBUTES for g, n in tr[a].value_counts().sort_index().items()]
    return (f'<table class="kv">{kv}</table><p>Training-set composition (implicit groups: '
            "lesion-size and contrast quartiles of the training set):</p>"
            + html_table(pd.DataFrame(dist)))


def htl_section(run: RunInputs) -> tuple[str, list[str]]:
    h = run.htl
    n_sel = int(h["selected"].sum())
    facts = [f"HTL set: {n_sel} of {len(h)} training images ({n_sel / len(h):.0%}); source: "
             f"{run.htl_source}; h mean {h['h'].mean():.3f}, HTL threshold "
             f"h ≥ {h.loc[h['selected'], 'h'].min():.3f}" if n_sel else "HTL set is empty"]
    body = (f"<p>{html.escape(facts[0])}.</p>"
            f'<img alt="HTL score histogram" src="{score_histogram(h)}">')
    if len(run.versions) > 1:
        evo = htl_set_evolution(run.versions)
        body += ("<p>How the HTL set changed across refreshes (churn = share of the set that "
                 "is new):</p>" + html_table(evo))
        mean_churn = evo["churn"].dropna().mean()
        if mean_churn == mean_churn:
            facts.append(f"HTL set churn across {len(run.versions)} refreshes: mean "
                         f"{mean_churn:.0%} new per refresh")
    return body, facts


def enrichment_table(run: RunInputs) -> pd.DataFrame:
    return enrichment(run.htl, _attrs(), correction="holm").sort_values(
        ["p_adjusted", "odds_ratio"], ascending=[True, False]).reset_index(drop=True)


def performance_table(run: RunInputs, baseline: RunInputs | None, seed: int = 0
                      ) -> pd.DataFrame:
    rows = []
    paired = None
    if baseline is not None:
        paired = run.val.merge(baseline.val[["id", "dice"]], on="id", suffixes=("", "_base"))
        paired["delta"] = paired["dice"] - paired["dice_base"]
    for attr in _attrs():
        mf = metric_frame(run.val, "dice", attr, seed=seed)
        base = metric_frame(baseline.val, "dice", attr, seed=seed) if baseline else None
        diff = metric_frame(paired, "delta", attr, seed=seed) if paired is not None else None
        for group, r in mf.by_group.iterrows():
            row = {"attribute": _name(attr), "group": group, "n": int(r["count"]),
                   "dice": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
            if base is not None and diff is not None:
                b = base.by_group.reindex([group]).iloc[0]
                dd = diff.by_group.reindex([group]).iloc[0]
                row.update({"baseline dice": b["mean"], "Δ dice": dd["mean"],
                            "Δ ci_low": dd["ci_low"], "Δ ci_high": dd["ci_high"]})
            rows.append(row)
    return pd.DataFrame(rows)


def worst_table(run: RunInputs, baseline: RunInputs | None) -> pd.DataFrame:
    rows = []
    for attr in _attrs():
        for label, r in [("run", run)] + ([("baseline", baseline)] if baseline else []):
            s = metric_frame(r.val, "dice", attr, n_boot=0).summary()
            rows.append({"attribute": _name(attr), "model": label, **s})
    return pd.DataFrame(rows)[["attribute", "model", "overall", "worst_group", "group_min",
                               "group_max", "difference", "ratio"]]


def build_report(run_dir: str | Path, baseline_dir: str | Path | None = None,
                 out_dir: str | Path | None = None, *, top: int = 8) -> Report:
    run = load_run(run_dir)
    baseline = load_run(baseline_dir) if baseline_dir else None
    out = Path(out_dir) if out_dir else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = f"HTL report: {run.name}" + (f" vs {baseline.name}" if baseline else "")

    htl_body, facts = htl_section(run)
    enr = enrichment_table(run)
    sig = enr["p_adjusted"] < SIGNIFICANT
    enr_show = enr[["attribute", "group", "count", "htl", "htl_rate", "base_rate", "rate_ratio",
                    "odds_ratio", "or_ci_low", "or_ci_high", "p", "p_adjusted"]]
    enriched = enr_show[sig & (enr["odds_ratio"] > 1)]
    depleted = enr_show[sig & (enr["odds_ratio"] < 1)]
    facts.append("enriched among HTL samples (Holm-corrected p < 0.05): " + (", ".join(
        f"{r.attribute}={r.group} (OR {r.odds_ratio:.2f}, p {r.p_adjusted:.2g})"
        for r in enriched.itertuples()) or "none"))
    if len(depleted):
        facts.append("under-represented: " + ", ".join(
            f"{r.attribute}={r.group} (OR {r.odds_ratio:.2f})" for r in depleted.itertuples()))
    perf = performance_table(run, baseline)
    worst = worst_table(run, baseline)
    overall = float(run.val["dice"].mean())
    facts.insert(0, f"validation Dice {overall:.3f} (best epoch {run.best_epoch + 1})"
                 + (f"; baseline {baseline.name}: {baseline.val['dice'].mean():.3f}"
                    if baseline else ""))
    for r in worst[worst["model"] == "run"].itertuples():
        if r.attribute in ("site", "contrast_quartile", "size_quartile", "sex × age_bin"):
            facts.append(f"worst {r.attribute}: {r.worst_group} (Dice {r.group_min:.3f} vs "
                         f"best group {r.group_max:.3f})")

    top_ids = run.htl.sort_values("h", ascending=False)["id"].head(top).astype(str).tolist()
    rows = gallery(run.config.data.path, top_ids, run.config.to_dict()["model"],
                   load_checkpoint(run.best_checkpoint)["model"], max(run.config.htl.sparsities),
                   run.config.htl.pruning, dict(zip(run.htl["id"], run.htl["h"], strict=True)))
    gallery_html = "".join(f'<figure><img alt="HTL sample {html.escape(sid)}" src="{uri}">'
                           f"</figure>" for sid, uri in rows)

    perf_note = ("<p>Validation Dice per group, mean over images with a 95% bootstrap CI "
                 "(1,000 resamples, seed 0)" + ("; Δ = this run − baseline, paired per image"
                                                 if baseline else "") + ".</p>")
    header = ('<table class="kv">' + "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td>"
                                             "</tr>" for k, v in [
        ("run directory", run.run_dir), ("setting", run.config.supervision.setting),
        ("HTL method", run.config.htl.method), ("MLflow run", run.state.mlflow_run_id),
        ("baseline", baseline.run_dir if baseline else "none")]) + "</table>"
        + "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>")
    sections = [
        section("dataset", dataset_section(run)),
        section("htl-scores", htl_body),
        section("enrichment", "<p>Per group: HTL rate against the base rate, odds ratio of "
                "being HTL inside vs outside the group (95% CI), two-sided Fisher exact p, "
                "Holm-corrected over all groups; highlighted rows have corrected p &lt; 0.05."
                "</p>" + html_table(enr_show, sig)),
        section("performance", perf_note + html_table(perf)),
        section("worst-group", "<p>Per attribute: the group with the lowest mean Dice "
                "(unknown groups excluded), the spread (difference = max − min) and ratio "
                "(min / max).</p>" + html_table(worst)),
        section("gallery", f"<p>The {len(rows)} training images with the highest h: ground "
                "truth (green), dense prediction (blue), prediction of the copy pruned to "
                f"{max(run.config.htl.sparsities):.0%} sparsity (red).</p>" + gallery_html),
    ]
    html_path = out / "report.html"
    html_path.write_text(page(title, header, sections))
    md_path = out / "report.md"
    perf_md = perf[[c for c in perf.columns if c not in ("ci_low", "ci_high")]]
    md_path.write_text(markdown_summary(title, facts, enriched.round(4), perf_md,
                                        worst.round(4)))
    enr.to_csv(out / "enrichment.csv", index=False)
    _log_to_mlflow(run, out)
    logger.info(f"[htl-ray] report: {html_path} ({html_path.stat().st_size / 1e6:.1f} MB) and "
                f"{md_path}")
    return Report(html_path, md_path, enr, perf, worst)


def _log_to_mlflow(run: RunInputs, out: Path) -> None:
    from htl_ray import tracking

    run_id, uri = run.state.mlflow_run_id, run.state.tracking_uri
    if not (run_id and uri):
        return
    try:
        for name in ("report.html", "report.md", "enrichment.csv"):
            tracking.log_artifact(uri, run_id, out / name, "report")
        logger.info(f"[htl-ray] report logged to MLflow run {run_id} (artifacts/report)")
    except Exception as exc:               # the files are written; tracking is a copy
        logger.warning(f"[htl-ray] warning: could not log the report to MLflow ({exc}); files kept")

