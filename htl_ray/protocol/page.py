"""The protocol's results page: the generated block of `docs/results.md`, rendered from what
MLflow holds (`status`) with the statistics of `htl_ray.analysis.stats`, and spliced into the
page between its marks, keeping the hand-written text around it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from htl_ray.analysis.group_effects import (
    ALL,
    BASELINE,
    TEST,
    ScoredRun,
    external_names,
    external_split,
    group_effects,
)
from htl_ray.analysis.stats import MeanCI, Reading, Verdict, goal_met, mean_ci, paired_difference
from htl_ray.compare import METRICS, compare
from htl_ray.errors import UserError
from htl_ray.protocol.report_cache import chosen_report
from htl_ray.protocol.status import (
    SettingStatus,
    confirmation_runs,
    groups,
    setting_status,
    short_commit,
    val_by_seed,
)
from htl_ray.tables import markdown_table
from htl_ray.tracking.schema import ABLATION_ROLE, CONFIRM_ROLE, GROUP_TAG
from htl_ray.tune.space import Sweep
from htl_ray.tune.sweep import VERDICT_GROUPS

BEGIN = "<!-- htl-ray reproduce: begin (generated from MLflow by `htl-ray reproduce`; edits " \
        "inside these marks are replaced) -->"
END = "<!-- htl-ray reproduce: end -->"
TITLE = "Reproduction protocol: HTL attention vs ERM, the placebo and loss-based attention"


def marks(block: str | None = None) -> tuple[str, str]:
    """The (begin, end) marks of a generated block: the protocol's own, or those of a named
    one (`htl-ray reproduce --block round2`: a later round beside the first on one page)."""
    if block is None:
        return BEGIN, END
    return (BEGIN.replace("reproduce: begin", f"reproduce {block}: begin", 1),
            END.replace("reproduce: end", f"reproduce {block}: end", 1))
GOAL_BASELINES = ("ERM", "random")   # the goal: HTL ahead of both


def _fmt(m: float, lo: float = float("nan"), hi: float = float("nan"), signed: bool = False,
         points: bool = False) -> str:
    """0.8123 → `0.812`; differences in points of the metric (×100) when `points`."""
    if m != m:
        return "–"
    scale, f = (100.0, "+.1f" if signed else ".1f") if points else (1.0, "+.3f" if signed
                                                                      else ".3f")
    s = format(m * scale, f)
    return s if lo != lo else f"{s} [{format(lo * scale, f)}, {format(hi * scale, f)}]"


def method_table(runs: pd.DataFrame, comparators: list[str] | dict[str, list[str]]
                 ) -> tuple[pd.DataFrame, dict[tuple[str, str], Verdict]]:
    """One row per confirmation group on the test split: mean [95% CI] over seeds of the four
    metrics, and the paired differences (points) of Dice and thresholded Jaccard to ERM and to
    the placebo. Also returns the verdicts of the chosen configuration's (`best`'s)
    differences, by (baseline, metric). A group is its `htl.group` tag (rows without tags: its
    method); `best` is shown as its method unless a comparator group has that name."""
    names = list(comparators)
    groups = [_run_group(r) for r in runs.itertuples()]
    if "best" not in groups and "htl" not in names:       # rows without tags: best is htl
        groups = ["best" if g == "htl" else g for g in groups]
    label = group_labels(runs, groups, names)
    group_of = dict(zip(runs["run_id"], groups, strict=True))
    baselines = {"ERM": "erm", "random": "random"}
    by_base = {name: compare(runs, "test", _baseline_params(runs, groups, g))
               for name, g in baselines.items() if g in names}
    first = next(iter(by_base.values())) if by_base else compare(runs, "test")
    config_group = {c: group_of[r] for c, r in zip(first.runs["configuration"],
                                                   first.runs["run_id"], strict=True)}
    order = ["best", *names]
    rows, verdicts = [], {}
    for _, r in first.table.iterrows():
        group = config_group[r["configuration"]]
        scored = first.runs[first.runs["configuration"] == r["configuration"]]["dice"]
        row = {"method": label.get(group, group), "seeds": int(scored.notna().sum())}
        for m in METRICS:
            row[m] = _fmt(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
        for name, result in by_base.items():
            t = result.table.set_index("configuration").loc[r["configuration"]]
            for m, short in (("dice", "Dice"), ("thresholded_jaccard", "thr-J")):
                row[f"Δ{short} vs {name}"] = _fmt(t[f"d_{m}"], t[f"d_{m}_lo"],
                                                  t[f"d_{m}_hi"], signed=True, points=True)
                if group == "best":
                    if (name, m) in verdicts:
                        raise UserError("two configurations of the chosen group among the "
                                        "confirmation runs of one sweep; see `htl-ray compare "
                                        "--sweep`")
                    verdicts[(name, m)] = Verdict(name, m, MeanCI(
                        t[f"d_{m}"], t[f"d_{m}_lo"], t[f"d_{m}_hi"]))
        rows.append((order.index(group) if group in order else len(order), row))
    table = pd.DataFrame([row for _, row in sorted(rows, key=lambda x: x[0])])
    return table.reset_index(drop=True), verdicts


def group_labels(runs: pd.DataFrame, groups: list[str], names: Iterable[str] = ()
                 ) -> dict[str, str]:
    """How the page names each confirmation group (`groups`: each run's; `names`: the
    setting's groups, with or without runs yet): by its name, but `best` by its method — with
    its λ where a group has that name (a second round's down-weighting variant beside its `htl`
    group, also before the `htl` group has a run)."""
    label = {g: g for g in groups}
    if "best" in label:
        best_params = runs.params[[g == "best" for g in groups]].iloc[0]
        method = best_params.get("htl.method", "?")
        label["best"] = method if method not in {*label, *names} else (
            f"best ({method}, λ={float(best_params.get('htl.lam', 'nan')):.2f})")
    return label


def _baseline_params(runs: pd.DataFrame, groups: list[str], group: str) -> dict[str, str]:
    """The params that pick a baseline group's configuration out of the runs (`compare`'s
    baseline): its method and λ (a group without runs yet: the method named like it)."""
    if group not in groups:
        return {"htl.method": group}
    params = runs.params[[g == group for g in groups]].iloc[0]
    return {"htl.method": params.get("htl.method", group), "htl.lam": params.get("htl.lam")} \
        if params.get("htl.lam") is not None else {"htl.method": params.get("htl.method", group)}


def _metric_label(metric: str, short: bool = False) -> str:
    if metric == "thresholded_jaccard":
        return "thr-J" if short else "thresholded Jaccard"
    return "Dice"


_READINGS = {
    Reading.MEETS_GOAL: "**better, meeting the ≥ 2-point goal**",
    Reading.BELOW_GOAL: "better, but by less than the 2-point goal",
    Reading.WORSE: "**significantly worse**",
    Reading.LEVEL: "no significant difference (the 95% CI includes 0)",
}


def verdict_lines(verdicts: Iterable[Verdict], *, chosen: str = "HTL") -> list[str]:
    """Plain-language reading of the chosen configuration's (HTL's) paired differences,
    against the ≥ 2-point goal."""
    lines = []
    for v in verdicts:
        d, label, reading = v.difference, _metric_label(v.metric), v.reading
        if reading is Reading.MISSING:
            continue
        if reading is Reading.NO_INTERVAL:
            lines.append(f"{chosen} − {v.baseline}, {label}: {d.mean * 100:+.1f} points "
                         "(one seed pair: no CI)")
            continue
        lines.append(f"{chosen} − {v.baseline}, {label}: {d.mean * 100:+.1f} points "
                     f"[{d.low * 100:+.1f}, {d.high * 100:+.1f}]: {_READINGS[reading]}")
    return lines


def goal_lines(readings: list[tuple[str, dict[tuple[str, str], Verdict], bool]], *,
               chosen: str = "HTL") -> list[str]:
    """The issue's goal over all settings, from each setting's (name, verdicts, whether its
    verdict's runs have every seed): HTL ahead of *both* ERM and the placebo by ≥ 2 points of
    one metric (thresholded Jaccard or Dice), each 95% CI excluding 0, in at least one setting;
    and never significantly worse than either."""
    met, worse, pending = [], [], []
    for setting, verdicts, complete in readings:
        for metric in ("thresholded_jaccard", "dice"):
            if goal_met(verdicts, metric, GOAL_BASELINES):
                met.append(f"{setting} ({_metric_label(metric, short=True)})")
        worse += [f"{setting}: {chosen} − {v.baseline}, "
                  f"{_metric_label(v.metric, short=True)}"
                  for v in verdicts.values() if v.reading is Reading.WORSE]
        if not complete:
            pending.append(setting)
    reading = (f"**met** in {', '.join(met)}" if met else "**not met** in any setting") + (
        " so far" if pending else "")
    lines = [f"**The goal** — {chosen} ahead of both ERM and the random placebo by ≥ 2 points of "
             f"thresholded Jaccard or Dice, 95% CIs excluding 0, in at least one setting: "
             f"{reading}. Significantly worse than ERM or the placebo: "
             f"{'; '.join(worse) if worse else 'nowhere'}."]
    if pending:
        lines.append(f"Still without every seed of {chosen}, ERM and the placebo: "
                     f"{', '.join(pending)}.")
    return [" ".join(lines), ""]


def chosen_label(runs: pd.DataFrame, names: Iterable[str]) -> str:
    """What the verdicts call the chosen configuration (`best`): HTL, or in a round whose
    sweep chose something else beside an HTL group (a down-weighting variant), its name on the
    page (`group_labels`)."""
    groups = [_run_group(r) for r in runs.itertuples()]
    label = group_labels(runs, groups, names).get("best", "htl") if len(runs) else "htl"
    return "HTL" if label == "htl" else label


def enrichment_lines(sweep: Sweep) -> list[str]:
    """The HTL report of the best configuration's seed-0 run (beside ERM seed 0): groups
    enriched among its HTL samples, Holm-corrected."""
    report = chosen_report(sweep)
    if report is None:
        return []
    if report.enrichment is None:
        return [f"(no HTL report: {report.error})"]
    enr = report.enrichment
    sig = enr[(enr["p_adjusted"] < 0.05) & (enr["odds_ratio"] > 1)].head(8)
    where = (f"`{report.html}`" if report.html is not None else
             "built where the run was trained; its enrichment table came with the archive")
    lines = [f"HTL report of `{report.run.name}` (training images, top-q HTL set at its last "
             f"refresh; Fisher exact, Holm-corrected over {len(enr)} groups): {where}", ""]
    if sig.empty:
        return lines + ["No group is significantly enriched among HTL samples."]
    show = pd.DataFrame({
        "group": [f"{r.attribute} = {r.group}" for r in sig.itertuples()],
        "training images": sig["count"].astype(int), "HTL": sig["htl"].astype(int),
        "HTL rate": [f"{v:.0%}" for v in sig["htl_rate"]],
        "odds ratio [95% CI]": [f"{r.odds_ratio:.1f} [{r.or_ci_low:.1f}, {r.or_ci_high:.1f}]"
                                for r in sig.itertuples()],
        "corrected p": [f"{v:.1e}" for v in sig["p_adjusted"]]})
    return lines + [markdown_table(show)]


def _run_group(row) -> str:
    """A confirmation run's group (`htl.group`: best, erm, ...), from its tags where the rows
    carry them, else its `htl.method` (the same name for every comparator but `best`)."""
    tags = getattr(row, "tags", None)
    if isinstance(tags, dict) and tags.get(GROUP_TAG):
        return tags[GROUP_TAG]
    return row.params.get("htl.method", "?")


def group_effect_lines(runs: pd.DataFrame, enrichment: pd.DataFrame | None, *,
                       methods: list[str] | None = None) -> list[str]:
    """Per-group effects (an average can hide a method helping exactly the images HTL attends
    to, or costing those ERM serves worst): on the test split, and on each external test-only
    dataset the runs were scored on, each method group's Dice minus ERM's on the groups
    enriched among HTL samples and on each attribute's worst group under ERM, paired by seed.
    `methods`: the column order (the setting's groups); other groups follow."""
    scored = [ScoredRun(_run_group(r), str(r.seed), r.metrics) for r in runs.itertuples()]
    labels = group_labels(runs, [r.group for r in scored], methods or []) if len(runs) else {}
    order = [*(methods or []), *dict.fromkeys(r.group for r in scored)]
    order = [m for m in dict.fromkeys(order) if any(r.group == m for r in scored)]
    lines = []
    for name in [None, *external_names(scored)]:
        split = TEST if name is None else external_split(name)
        effects = group_effects(scored, enrichment, split=split, methods=order,
                                all_images=name is not None)
        where = ("Test split" if name is None else
                 f"External test-only dataset `{name}` (`htl-ray evaluate --data … --name "
                 f"{name}`)")
        if effects.empty:
            lines += [f"{where}, per group: no group Dice to compare yet.", ""]
            continue
        lines += [f"{where}, per group: Dice of each method group minus ERM's, paired by seed, "
                  "in points (×100), 95% Student-t CI over the seed pairs, n = pairs; "
                  + ("" if name is None else "all its images, then the ")
                  + "groups enriched among HTL samples (Holm-corrected p < "
                  "0.05, odds ratio > 1) and each attribute's worst group under ERM, chosen "
                  "on the validation split so "
                  "that the choice does not favour the methods on the images scored here "
                  "(`unknown` is never the worst). Each interval stands alone: with this many "
                  "cells, expect about one in twenty to exclude 0 by chance.", ""]
        rows = []
        for (attribute, group), sub in effects.groupby(["attribute", "group"], sort=False):
            first = sub.iloc[0]
            chosen = first["chosen"].replace(
                "enriched", f"enriched (OR {first['odds_ratio']:.1f})").replace(
                "worst", "worst for ERM")
            row = {"group": group if attribute == ALL else f"{attribute} = {group}",
                   "chosen as": "every image" if attribute == ALL else chosen,
                   "ERM Dice": _fmt(first["baseline_dice"])}
            for e in sub.itertuples():
                row[f"{labels.get(e.method, e.method)} − ERM"] = "–" if e.pairs == 0 else (
                    _fmt(e.difference, e.low, e.high, signed=True, points=True)
                    + f" (n={e.pairs})")
            rows.append(row)
        lines += [markdown_table(pd.DataFrame(rows)), ""]
    return lines


def _by_seed(runs: dict[str, dict[str, float]], metric: str) -> list[tuple[str, float]]:
    return sorted((seed, m[metric]) for seed, m in runs.items())


def _paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str
            ) -> str:
    """a − b paired by seed, in points; the number of pairs when it is not every seed of `a`."""
    paired = paired_difference(_by_seed(a, metric), _by_seed(b, metric))
    n = paired.pairs
    return _fmt(*paired.difference.as_tuple(), signed=True, points=True) + (
        f" ({n} of {len(a)} seeds paired)" if 0 < n < len(a) else "")


def _val_dice(runs: dict[str, dict[str, float]]) -> str:
    return _fmt(*mean_ci([m["dice"] for m in runs.values()]).as_tuple())


def ablation_lines(sweep: Sweep, uri: str, status: SettingStatus, *, ablate: bool = True
                   ) -> list[str]:
    """What else was tried: each ablation of the chosen configuration on val, paired by seed
    with the chosen configuration (`confirm-best`) and with ERM."""
    if not sweep.ablations:
        return []
    parent = status.parent_run_id
    chosen = val_by_seed(sweep, uri, parent, role=CONFIRM_ROLE, group="best")
    erm = val_by_seed(sweep, uri, parent, role=CONFIRM_ROLE, group="erm")
    rows = []
    for name, label in (("chosen", "best"), ("ERM", "erm")):
        runs = chosen if label == "best" else erm
        rows.append({"variant": f"{name} (confirmation runs)", "changes": "–",
                     "seeds": len(runs), "val Dice": _val_dice(runs),
                     "ΔDice vs chosen": "–", "Δthr-J vs chosen": "–",
                     "ΔDice vs ERM": "–" if label == "erm" else _paired(runs, erm, "dice")})
    for name, overrides in sweep.ablations.items():
        changes = ", ".join(f"`{o}`" for o in overrides)
        if name in status.ablations_same:
            rows.append({"variant": name, "changes": changes, "seeds": 0,
                         "val Dice": "= chosen", "ΔDice vs chosen": "(the sweep chose it)",
                         "Δthr-J vs chosen": "–", "ΔDice vs ERM": "–"})
            continue
        runs = val_by_seed(sweep, uri, parent, role=ABLATION_ROLE, group=name)
        rows.append({"variant": name, "changes": changes, "seeds": len(runs),
                     "val Dice": _val_dice(runs),
                     "ΔDice vs chosen": _paired(runs, chosen, "dice"),
                     "Δthr-J vs chosen": _paired(runs, chosen, "thresholded_jaccard"),
                     "ΔDice vs ERM": _paired(runs, erm, "dice")})
    spread = [m["dice"] for m in chosen.values()]
    lines = ["Also tried — ablations of the chosen configuration, **val split only** (trying "
             "variants is tuning: the test split is read by the confirmation runs alone); Δ = "
             "paired by seed, in points; val Dice of the best epoch:", "",
             markdown_table(pd.DataFrame(rows)), ""]
    if len(spread) > 1:
        lines += [f"Yardstick: the chosen configuration's val Dice ranges "
                  f"{min(spread):.3f}–{max(spread):.3f} over its {len(spread)} seeds.", ""]
    if not status.ablations_complete(sweep):
        lines += [("*Ablations incomplete: the rows above cover the runs finished so far.*"
                   if ablate else "*Ablations not run (`--no-ablations`): the rows above "
                                  "cover the runs an earlier sitting finished.*"), ""]
    return lines


def setting_section(sweep: Sweep, *, uri: str, seeds: int, ablate: bool = True
                    ) -> tuple[str, SettingStatus]:
    """One setting's section of the page, and its status (with its verdicts)."""
    status = setting_status(sweep, uri)
    names = groups(sweep, status.best_params)
    title = f"### {sweep.base.supervision.setting}: sweep `{sweep.settings.name}`"
    n_abl = sweep.settings.ablation_seeds
    ablated = sum(min(status.ablation_finished.get(a, 0), n_abl) for a in sweep.ablations)
    n_variants = len([a for a in sweep.ablations if a not in status.ablations_same])
    done = sum(min(status.confirm_finished.get(g, 0), seeds) for g in names)
    per_group = ", ".join(f"{g} {status.confirm_finished.get(g, 0)}" for g in names)
    lines = [title, "",
             f"Sweep file `{sweep.path}`; {status.trials_finished} of "
             f"{status.trials_asked} trials finished; confirmation runs {done} of "
             f"{len(names) * seeds} ({per_group}); "
             + (f"ablation runs (val only) {ablated} of {n_variants * n_abl}; "
                if sweep.ablations else "")
             + ("compute " if status.finished(sweep, seeds, ablate) else "compute so far ")
             + f"{status.compute_hours:.1f} h (wall clock of its runs"
             + (f"; {status.reused} confirmation runs reused from an earlier round, their "
                "hours not counted)" if status.reused else ")")
             + (f"; code: {', '.join(f'`{c}`' for c in sorted(status.commits))}."
                if status.commits else ".")]
    if status.best_params:
        lines += ["", "HTL configuration chosen on val: " + ", ".join(
            f"`{k}={v}`" for k, v in sorted(status.best_params.items())) + "."]
    if status.parent_run_id is None:
        return "\n".join(lines + ["", "*Not started.*", ""]), status
    runs = confirmation_runs(sweep, uri, status.parent_run_id)
    if runs.empty:
        return "\n".join(lines + ["", "*No confirmation run finished yet.*", ""]), status
    table, status.verdict = method_table(runs, list(sweep.comparator_groups))
    lines += ["", "Test split (never seen by tuning), best-on-val checkpoint of each run; mean "
              "[95% Student-t CI] over seeds; Δ = paired difference per seed, in points "
              "(×100):", "", markdown_table(table), ""]
    if not status.complete(names, seeds):
        lines += ["*Incomplete: the numbers above cover the runs finished so far.*", ""]
    lines += [f"- {v}" for v in verdict_lines(status.verdict.values(),
                                              chosen=chosen_label(runs, names))] + [""]
    report = chosen_report(sweep)
    lines += group_effect_lines(runs, None if report is None else report.enrichment,
                                methods=[g for g in names if g != BASELINE])
    lines += ablation_lines(sweep, uri, status, ablate=ablate)
    lines += enrichment_lines(sweep) + [""]
    return "\n".join(lines), status


def results_markdown(sweeps: list[Sweep], *, uri: str, seeds: int, command: str,
                     ablate: bool = True, title: str = TITLE) -> tuple[str, bool]:
    """The generated block of the results page, and whether every setting is complete (with
    `ablate`, its ablations too)."""
    from htl_ray import tracking

    sections, complete, hours, readings = [], True, 0.0, []
    for sweep in sweeps:
        n_seeds = sweep.confirm_seeds(seeds)
        text, status = setting_section(sweep, uri=uri, seeds=n_seeds, ablate=ablate)
        sections.append(text)
        hours += status.compute_hours
        readings.append((status.setting, status.verdict,
                         status.complete([g for g in groups(sweep, status.best_params)
                                          if g in VERDICT_GROUPS],
                                         n_seeds)))
        complete &= status.finished(sweep, n_seeds, ablate)
    head = [f"## {title}", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit "
            f"`{short_commit(tracking.git_commit())}` from MLflow `{tracking.redact(uri)}` by",
            "", "```bash", command, "```", "",
            f"Seeds 0–{seeds - 1} per method{_own_seeds(sweeps, seeds)}; {hours:.1f} compute "
            "hours "
            + ("in all. **Complete.**" if complete else "so far. **In progress** — run the "
               "same command to continue; finished runs are skipped."), "",
            *goal_lines(readings, chosen="HTL" if not any(
                "htl" in s.comparator_groups for s in sweeps) else "the chosen configuration")]
    return "\n".join(head + sections), complete


def _own_seeds(sweeps: list[Sweep], seeds: int) -> str:
    """` (supervised: 0–2)` for the settings whose sweep file sets its own seeds."""
    own = [f"{s.base.supervision.setting}: 0–{s.confirm_seeds(seeds) - 1}" for s in sweeps
           if s.confirm_seeds(seeds) != seeds]
    return f" ({'; '.join(own)})" if own else ""


def write_results(path: Path, block: str, *, name: str | None = None) -> None:
    """Replace the generated block of `path` (or append it), keeping the rest of the page and
    any other named block (`marks`)."""
    begin_mark, end_mark = marks(name)
    text = path.read_text() if path.is_file() else ""
    wrapped = f"{begin_mark}\n{block.rstrip()}\n{end_mark}\n"
    before, begin, rest = text.partition(begin_mark)
    if begin and end_mark in rest:
        after = rest.split(end_mark, 1)[1].lstrip("\n")
        text = before + wrapped + (("\n" + after) if after else "")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + wrapped
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
