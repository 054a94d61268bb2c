"""Per-group effects: each method group's Dice on a few groups of images minus ERM's, paired by
seed.

An average over the test split can hide a method that helps exactly the images HTL attends to,
or one that costs the images ERM already serves worst. So the groups looked at are those
enriched among HTL's hard training samples (the HTL report's enrichment table) and, per
attribute, the group with ERM's lowest Dice (`unknown` left out: its images share no
attribute) — on an external dataset after a first row of all its images (`ALL`): whether a
method transfers at all (on the test split, the method table has that number). Pure functions,
no MLflow: a run is its group (`htl.group`), seed and metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from htl_ray.analysis.groups import UNKNOWN, metric_key
from htl_ray.analysis.stats import mean_ci, paired_difference

BASELINE = "erm"
TEST = "test"
VAL = "val"
EXTERNAL = "external"
ALL = "all"               # the attribute of the row of every image: each method's overall Dice
ALPHA = 0.05              # enriched: Holm-corrected p below it and an odds ratio above 1
COLUMNS = ["attribute", "group", "key", "chosen", "odds_ratio", "baseline_dice", "method",
           "difference", "low", "high", "pairs"]


@dataclass(frozen=True)
class ScoredRun:
    """One confirmation run: its method group (best, erm, random, ...; several groups may share
    one `htl.method`, so runs are told apart by group), its seed and its logged metrics."""

    group: str
    seed: str
    metrics: Mapping[str, float]


def external_split(name: str) -> str:
    """The split name of an external dataset scored by `htl-ray evaluate --data --name`."""
    return f"{EXTERNAL}/{name}"


def external_names(runs: Iterable[ScoredRun]) -> list[str]:
    """The external datasets some run has a Dice of, of all its images or per group
    (`external/<name>/dice`, `external/<name>/group/...`, or `best/external/...`): each gets
    its own table."""
    pattern = re.compile(rf"^(?:best/)?{EXTERNAL}/([^/]+)/(?:group/[^/]+/[^/]+/)?dice$")
    return sorted({m.group(1) for r in runs for k in r.metrics if (m := pattern.match(k))})


def group_dice(metrics: Mapping[str, float], split: str, attribute: str, key: str) -> float:
    """A run's Dice of one group (`key`: the group's metric name fragment; attribute `ALL`: of
    every image) on `split`: its best checkpoint's (`best/<split>/...`) when logged, else
    `<split>/...` (what `htl-ray evaluate --data` logs); NaN when the run has neither."""
    name = "dice" if attribute == ALL else f"group/{attribute}/{key}/dice"
    for prefix in (f"best/{split}", split):
        value = metrics.get(f"{prefix}/{name}")
        if value is not None:
            return float(value)
    return math.nan


def logged_groups(runs: Iterable[ScoredRun], split: str) -> dict[str, set[str]]:
    """Attribute → the group keys some run has a Dice of on `split`: only these can be
    compared (the enrichment's two-attribute intersections, for one, are not logged per run)."""
    pattern = re.compile(rf"^(?:best/)?{re.escape(split)}/group/([^/]+)/([^/]+)/dice$")
    out: dict[str, set[str]] = {}
    for r in runs:
        for k in r.metrics:
            if m := pattern.match(k):
                out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def _baseline_mean(runs: Sequence[ScoredRun], split: str, attribute: str, key: str,
                   baseline: str) -> float:
    return mean_ci(group_dice(r.metrics, split, attribute, key)
                   for r in runs if r.group == baseline).mean


def chosen_groups(runs: Iterable[ScoredRun], enrichment: pd.DataFrame | None, *,
                  split: str = TEST, baseline: str = BASELINE,
                  choose_on: str = VAL) -> pd.DataFrame:
    """The groups to compare on `split`, one row each (attribute, group as the enrichment names
    it, key, chosen, odds_ratio, baseline_dice): those enriched among HTL samples (corrected p
    < 0.05, odds ratio > 1), in the enrichment table's order, then each attribute's worst group
    under `baseline` (lowest mean Dice over its runs, `unknown` left out) not already there.
    The worst group is chosen on `choose_on` (val), not on `split`: a group chosen for ERM's
    low Dice on the very images it is then scored on is one where ERM was unlucky, and every
    method would seem to gain there (regression to the mean). An attribute with no Dice on
    `choose_on` is chosen on `split`, and says so. Groups no run logged a Dice of on `split`
    are left out."""
    runs = list(runs)
    logged = logged_groups(runs, split)
    elsewhere = logged_groups([r for r in runs if r.group == baseline], choose_on)
    names: dict[tuple[str, str], str] = {}
    rows: dict[tuple[str, str], dict] = {}
    if enrichment is not None and not enrichment.empty:
        for r in enrichment.itertuples():
            names.setdefault((r.attribute, metric_key(str(r.group))), str(r.group))
        enriched = enrichment[(enrichment["p_adjusted"] < ALPHA)
                              & (enrichment["odds_ratio"] > 1)]
        for r in enriched.itertuples():
            key = metric_key(str(r.group))
            if key in logged.get(r.attribute, ()) and (r.attribute, key) not in rows:
                rows[(r.attribute, key)] = {"chosen": "enriched",
                                            "odds_ratio": float(r.odds_ratio)}
    for attribute in sorted(logged):
        keys = [k for k in sorted(logged[attribute]) if k != UNKNOWN]
        on = choose_on if set(keys) & elsewhere.get(attribute, set()) else split
        means = {key: _baseline_mean(runs, on, attribute, key, baseline) for key in keys}
        means = {k: v for k, v in means.items() if v == v}
        if not means:
            continue
        worst = min(means, key=means.__getitem__)
        label = "worst" if on == choose_on else f"worst (on {split})"
        if (attribute, worst) in rows:
            rows[(attribute, worst)]["chosen"] = f"enriched, {label}"
        else:
            rows[(attribute, worst)] = {"chosen": label, "odds_ratio": math.nan}
    return pd.DataFrame(
        [{"attribute": a, "group": names.get((a, k), k), "key": k, **row,
          "baseline_dice": _baseline_mean(runs, split, a, k, baseline)}
         for (a, k), row in rows.items()],
        columns=COLUMNS[:6])


def group_effects(runs: Iterable[ScoredRun], enrichment: pd.DataFrame | None, *,
                  split: str = TEST, baseline: str = BASELINE,
                  methods: Sequence[str] | None = None, level: float = 0.95,
                  all_images: bool = False) -> pd.DataFrame:
    """For each chosen group (`chosen_groups`) — with `all_images`, first every image of
    `split` (attribute `ALL`, when some run logged its Dice there) — and each method group but
    `baseline` (`methods`' order, else the runs' order): the mean of its Dice minus the
    baseline's over the seeds both have that group's Dice of (a run that did not log it pairs
    with nothing), the Student-t `level` interval over those pairs, and the number of pairs —
    as fractions, not points. The seed pairs cancel the seed-to-seed variation common to both
    arms."""
    runs = list(runs)
    chosen = chosen_groups(runs, enrichment, split=split, baseline=baseline)
    if all_images and any(not math.isnan(group_dice(r.metrics, split, ALL, ""))
                          for r in runs):
        every = {"attribute": ALL, "group": "all images", "key": "", "chosen": ALL,
                 "odds_ratio": math.nan,
                 "baseline_dice": _baseline_mean(runs, split, ALL, "", baseline)}
        chosen = pd.concat([pd.DataFrame([every], columns=chosen.columns), chosen],
                           ignore_index=True)
    if methods is None:
        methods = list(dict.fromkeys(r.group for r in runs))
    methods = [m for m in methods if m != baseline]
    rows = []
    for g in chosen.itertuples(index=False):
        def arm(name: str, g=g) -> list[tuple[str, float]]:
            values = ((r.seed, group_dice(r.metrics, split, g.attribute, g.key))
                      for r in runs if r.group == name)
            return [(seed, v) for seed, v in values if v == v]

        base = arm(baseline)
        for method in methods:
            d = paired_difference(arm(method), base, level=level)
            rows.append({**g._asdict(), "method": method, "difference": d.difference.mean,
                         "low": d.difference.low, "high": d.difference.high,
                         "pairs": d.pairs})
    return pd.DataFrame(rows, columns=COLUMNS)
