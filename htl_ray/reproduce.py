"""`htl-ray reproduce`: the paper's comparison on real data, resumable across sittings.

A protocol is a list of sweep files, one per supervision setting. For each setting the HTL
sweep runs (its trials see only the train and val splits), then its confirmation runs: the best
HTL configuration and the same configuration with each comparator's `htl.method` (ERM, the
random placebo, loss, EL2N), N seeds each, every one scored once on the test split; once every
setting has them, each setting's ablations (`htl_ray.tune.ablation`, val only). Everything
already FINISHED in MLflow is skipped, so the protocol can be stopped (Ctrl-C) and continued by
running the same command again. After every setting, the results section of the results page
is regenerated from MLflow: what an interrupted protocol has is documented, with what is
missing said as such.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from htl_ray.compare import METRICS, compare, load_runs, mean_ci, run_metrics
from htl_ray.errors import UserError
from htl_ray.tables import markdown_table
from htl_ray.tracking.outcome import TrialOutcome, counts_as_done, trial_outcome
from htl_ray.tracking.schema import (
    ABLATION_ROLE,
    GIT_COMMIT_TAG,
    GROUP_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    SWEEP_TAG,
    TRIAL_ROLE,
)
from htl_ray.train.checkpoints import RUN_STATE_FILE
from htl_ray.tune.ablation import matches_variant, same_as_chosen
from htl_ray.tune.prior_trials import typed_params
from htl_ray.tune.space import Sweep, load_sweep
from htl_ray.tune.sweep import (
    SCORED_ROLES,
    STATE_FILE,
    VERDICT_GROUPS,
    best_params,
    confirm_run_name,
    run_sweep,
    scored_key,
)

BEGIN = "<!-- htl-ray reproduce: begin (generated from MLflow by `htl-ray reproduce`; edits " \
        "inside these marks are replaced) -->"
END = "<!-- htl-ray reproduce: end -->"
GOAL = 0.02          # the paper's claim: ≥ 2 points of thresholded Jaccard (or Dice)


@dataclass
class SettingStatus:
    """What MLflow holds of one setting's sweep."""

    name: str
    setting: str
    parent_run_id: str | None = None
    trials_finished: int = 0                  # finished or stopped early by the scheduler
    trials_asked: int = 0
    confirm_finished: dict[str, int] = field(default_factory=dict)      # group → seeds
    ablation_finished: dict[str, int] = field(default_factory=dict)     # variant → seeds
    ablations_same: list[str] = field(default_factory=list)   # variants = the chosen config
    compute_hours: float = 0.0
    best_params: dict[str, str] = field(default_factory=dict)
    commits: set[str] = field(default_factory=set)  # code that trained its runs (and resumes)
    # (baseline, metric) → HTL's paired difference (mean, CI low, CI high) on test
    verdict: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)

    def complete(self, groups: list[str], seeds: int) -> bool:
        return all(self.confirm_finished.get(g, 0) >= seeds for g in groups)

    def ablations_complete(self, sweep: Sweep) -> bool:
        return all(self.ablation_finished.get(name, 0) >= sweep.settings.ablation_seeds
                   for name in sweep.ablations if name not in self.ablations_same)

    def finished(self, sweep: Sweep, seeds: int, ablate: bool = True) -> bool:
        """Nothing left for the protocol to train in this setting: every confirmation run
        and, with `ablate`, every ablation."""
        return self.complete(_groups(sweep), seeds) and (
            not ablate or self.ablations_complete(sweep))


def _groups(sweep: Sweep) -> list[str]:
    return ["best", *sweep.settings.comparators]


def setting_status(sweep: Sweep, uri: str) -> SettingStatus:
    from htl_ray.tracking import client as tracking_client

    status = SettingStatus(sweep.settings.name, sweep.base.supervision.setting,
                           trials_asked=sweep.settings.num_samples)
    state = sweep.directory / STATE_FILE
    if not state.is_file():
        return status
    status.parent_run_id = json.loads(state.read_text())["parent_run_id"]
    client = tracking_client(uri)
    exp = client.get_experiment_by_name(sweep.base.tracking.experiment)
    if exp is None:
        return status
    parent = client.get_run(status.parent_run_id)
    status.best_params = best_params(parent.data.params)
    if status.best_params and sweep.ablations:
        status.ablations_same = same_as_chosen(sweep, typed_params(sweep, status.best_params))
    seeds: dict[tuple[str, str], set[str]] = {}   # (role, group) → distinct seeds finished
    # this sweep's runs only: not those of an abandoned sweep of the same name in this store
    for run in client.search_runs([exp.experiment_id],
                                  f"tags.`{SWEEP_TAG}` = '{sweep.settings.name}' and "
                                  f"tags.`mlflow.parentRunId` = '{status.parent_run_id}'",
                                  max_results=50000):
        role = run.data.tags.get(ROLE_TAG)
        if role == SWEEP_ROLE or not (run.info.status == "FINISHED" or (
                role == TRIAL_ROLE and _trial_ended(client, run, bool(status.best_params)))):
            continue
        if run.info.end_time and run.info.start_time:
            status.compute_hours += (run.info.end_time - run.info.start_time) / 3.6e6
        status.commits |= {_short(v) for k, v in run.data.tags.items()
                           if k.startswith(GIT_COMMIT_TAG)}
        if role == "trial":
            status.trials_finished += 1           # trials ASHA stopped early have ended too
        elif role in SCORED_ROLES and scored_key(role) in run.data.metrics:
            group = run.data.tags.get(GROUP_TAG, "?")
            if role == ABLATION_ROLE and not matches_variant(sweep, group, run.data.params):
                continue              # a variant since edited: its old runs are not its runs
            seeds.setdefault((role, group), set()).add(run.data.params.get("run.seed", "?"))
    for (role, group), done in seeds.items():
        counts = status.confirm_finished if role == "confirm" else status.ablation_finished
        counts[group] = len(done)     # a seed trained twice (two machines) counts once
    return status


def _trial_ended(client, run, sweep_final: bool) -> bool:
    """A KILLED trial still counts when the scheduler stopped it early, when its sweep has
    ended (`sweep_final`: the parent records best.* params only then, so Tune runs none of its
    trials again, whatever tag an interruption left), or when it had trained its last epoch
    before its sweep was interrupted. A run Tune re-ran as a new trial (`htl.orphaned`) never
    counts: its suggestion is counted once, in the new trial."""
    outcome = trial_outcome(run)
    if outcome is not TrialOutcome.INTERRUPTED or sweep_final:
        return counts_as_done(outcome, sweep_final=sweep_final, trained_every_epoch=False)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")]
    every = bool(steps) and max(steps) + 1 >= int(run.data.params.get("train.epochs", 0))
    return counts_as_done(outcome, sweep_final=sweep_final, trained_every_epoch=every)


def _fmt(m: float, lo: float = math.nan, hi: float = math.nan, signed: bool = False,
         points: bool = False) -> str:
    """0.8123 → `0.812`; differences in points of the metric (×100) when `points`."""
    if m != m:
        return "–"
    scale, f = (100.0, "+.1f" if signed else ".1f") if points else (1.0, "+.3f" if signed
                                                                      else ".3f")
    s = format(m * scale, f)
    return s if lo != lo else f"{s} [{format(lo * scale, f)}, {format(hi * scale, f)}]"


def method_table(runs: pd.DataFrame, comparators: list[str]) -> tuple[pd.DataFrame, dict]:
    """One row per method on the test split: mean [95% CI] over seeds of the four metrics, and
    the paired differences (points) of Dice and thresholded Jaccard to ERM and to the placebo.
    Also returns the HTL row's raw differences for the verdict."""
    method_of = {r.run_id: r.params.get("htl.method", "?") for r in runs.itertuples()}
    baselines = {"ERM": "erm", "random": "random"}
    by_base = {name: compare(runs, "test", {"htl.method": m})
               for name, m in baselines.items() if m in comparators}
    first = next(iter(by_base.values())) if by_base else compare(runs, "test")
    config_method = {c: method_of[r] for c, r in zip(first.runs["configuration"],
                                                     first.runs["run_id"], strict=True)}
    order = ["htl", *comparators]
    rows, verdict = [], {}
    for _, r in first.table.iterrows():
        method = config_method[r["configuration"]]
        scored = first.runs[first.runs["configuration"] == r["configuration"]]["dice"]
        row = {"method": method, "seeds": int(scored.notna().sum())}
        for m in METRICS:
            row[m] = _fmt(r[m], r[f"{m}_lo"], r[f"{m}_hi"])
        for name, result in by_base.items():
            t = result.table.set_index("configuration").loc[r["configuration"]]
            for m, short in (("dice", "Dice"), ("thresholded_jaccard", "thr-J")):
                row[f"Δ{short} vs {name}"] = _fmt(t[f"d_{m}"], t[f"d_{m}_lo"],
                                                  t[f"d_{m}_hi"], signed=True, points=True)
                if method == "htl":
                    if (name, m) in verdict:
                        raise UserError("two HTL configurations among the confirmation runs "
                                         "of one sweep; see `htl-ray compare --sweep`")
                    verdict[(name, m)] = (t[f"d_{m}"], t[f"d_{m}_lo"], t[f"d_{m}_hi"])
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_o"] = [order.index(m) if m in order else len(order) for m in table["method"]]
    return table.sort_values("_o").drop(columns="_o").reset_index(drop=True), verdict


def verdict_lines(verdict: dict) -> list[str]:
    """Plain-language reading of HTL's paired differences, against the ≥ 2-point goal."""
    lines = []
    for (name, metric), (d, lo, hi) in verdict.items():
        label = "thresholded Jaccard" if metric == "thresholded_jaccard" else "Dice"
        if d != d:
            continue
        if lo != lo:
            lines.append(f"HTL − {name}, {label}: {d * 100:+.1f} points (one seed pair: no CI)")
            continue
        if lo > 0:
            reading = ("**better, meeting the ≥ 2-point goal**" if d >= GOAL
                       else "better, but by less than the 2-point goal")
        elif hi < 0:
            reading = "**significantly worse**"
        else:
            reading = "no significant difference (the 95% CI includes 0)"
        lines.append(f"HTL − {name}, {label}: {d * 100:+.1f} points "
                     f"[{lo * 100:+.1f}, {hi * 100:+.1f}]: {reading}")
    return lines


def _newest_file(*run_dirs: Path | None) -> float:
    """Modification time of the newest file in the run directories: a report older than it
    is stale (the run went on, or its ERM baseline appeared)."""
    return max((p.stat().st_mtime for d in run_dirs if d is not None
                for p in d.rglob("*") if p.is_file()), default=math.inf)


def enrichment_lines(sweep: Sweep, log: Callable[[str], None]) -> list[str]:
    """The HTL report of the best configuration's seed-0 run (beside ERM seed 0): groups
    enriched among its HTL samples, Holm-corrected."""
    from htl_ray.report.build import build_report

    runs_dir = sweep.directory / "runs"
    run, base = runs_dir / confirm_run_name("best", 0), runs_dir / confirm_run_name("erm", 0)
    out = sweep.directory / "report"
    cached = out / "enrichment.csv"
    here = (run / RUN_STATE_FILE).is_file()
    if not here and not cached.is_file():
        return []
    baseline = base if (base / RUN_STATE_FILE).is_file() else None
    if cached.is_file() and (not here or cached.stat().st_mtime >= _newest_file(run, baseline)):
        # the page is rewritten after every run: build it once; a seed-0 run trained on
        # another machine left its table in the protocol archive
        enr = pd.read_csv(cached)
    else:
        try:
            enr = build_report(run, baseline, out, log=log).enrichment
        except (FileNotFoundError, ValueError, KeyError) as exc:
            return [f"(no HTL report: {exc})"]
    sig = enr[(enr["p_adjusted"] < 0.05) & (enr["odds_ratio"] > 1)].head(8)
    html = out / "report.html"
    where = (f"`{html}`" if html.is_file() else
             "built where the run was trained; its enrichment table came with the archive")
    lines = [f"HTL report of `{run.name}` (training images, top-q HTL set at its last "
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


def _val_by_seed(uri: str, sweep: Sweep, parent_run_id: str, role: str, group: str
                 ) -> dict[str, dict[str, float]]:
    """Seed → val metrics (best epoch) of the sweep's finished runs of one role and group; of
    an ablation, only runs of the variant as the sweep file names it now. A seed trained twice
    (on two machines) is its newest run."""
    runs = load_runs(uri, sweep.base.tracking.experiment,
                     f"tags.`{SWEEP_TAG}` = '{sweep.settings.name}' and "
                     f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                     f"tags.`{ROLE_TAG}` = '{role}' and tags.`{GROUP_TAG}` = '{group}'")
    out: dict[str, dict[str, float]] = {}
    for r in runs.itertuples():             # MLflow returns the newest run first
        if "best/val/dice" in r.metrics and str(r.seed) not in out and (
                role != ABLATION_ROLE or matches_variant(sweep, group, r.params)):
            out[str(r.seed)] = run_metrics(r.metrics, "val")
    return out


def paired_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]],
                      metric: str) -> tuple[float, float, float, int]:
    """Mean, 95% CI and number of pairs of a − b over the seeds both have."""
    pairs = sorted(set(a) & set(b))
    return (*mean_ci([a[s][metric] - b[s][metric] for s in pairs]), len(pairs))


def _paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str
            ) -> str:
    """`paired_difference` in points; the number of pairs when it is not every seed of `a`."""
    d, lo, hi, n = paired_difference(a, b, metric)
    return _fmt(d, lo, hi, signed=True, points=True) + (
        f" ({n} of {len(a)} seeds paired)" if 0 < n < len(a) else "")


def ablation_lines(sweep: Sweep, uri: str, status: SettingStatus, ablate: bool = True
                   ) -> list[str]:
    """What else was tried: each ablation of the chosen configuration on val, paired by seed
    with the chosen configuration (`confirm-best`) and with ERM."""
    if not sweep.ablations:
        return []
    parent = status.parent_run_id
    chosen = _val_by_seed(uri, sweep, parent, "confirm", "best")
    erm = _val_by_seed(uri, sweep, parent, "confirm", "erm")
    rows = []
    for name, label in (("chosen", "best"), ("ERM", "erm")):
        runs = chosen if label == "best" else erm
        rows.append({"variant": f"{name} (confirmation runs)", "changes": "–",
                     "seeds": len(runs),
                     "val Dice": _fmt(*mean_ci([m["dice"] for m in runs.values()])),
                     "ΔDice vs chosen": "–", "Δthr-J vs chosen": "–",
                     "ΔDice vs ERM": "–" if label == "erm" else _paired(runs, erm, "dice")})
    for name, overrides in sweep.ablations.items():
        changes = ", ".join(f"`{o}`" for o in overrides)
        if name in status.ablations_same:
            rows.append({"variant": name, "changes": changes, "seeds": 0,
                         "val Dice": "= chosen", "ΔDice vs chosen": "(the sweep chose it)",
                         "Δthr-J vs chosen": "–", "ΔDice vs ERM": "–"})
            continue
        runs = _val_by_seed(uri, sweep, parent, ABLATION_ROLE, name)
        rows.append({"variant": name, "changes": changes, "seeds": len(runs),
                     "val Dice": _fmt(*mean_ci([m["dice"] for m in runs.values()])),
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


def setting_section(sweep: Sweep, uri: str, seeds: int, log: Callable[[str], None],
                    ablate: bool = True) -> tuple[str, SettingStatus]:
    status = setting_status(sweep, uri)
    groups = _groups(sweep)
    title = f"### {sweep.base.supervision.setting}: sweep `{sweep.settings.name}`"
    n_abl = sweep.settings.ablation_seeds
    ablated = sum(min(status.ablation_finished.get(a, 0), n_abl) for a in sweep.ablations)
    n_variants = len([a for a in sweep.ablations if a not in status.ablations_same])
    done = sum(min(status.confirm_finished.get(g, 0), seeds) for g in groups)
    per_group = ", ".join(f"{g} {status.confirm_finished.get(g, 0)}" for g in groups)
    lines = [title, "",
             f"Sweep file `{sweep.path}`; {status.trials_finished} of "
             f"{status.trials_asked} trials finished; confirmation runs {done} of "
             f"{len(groups) * seeds} ({per_group}); "
             + (f"ablation runs (val only) {ablated} of {n_variants * n_abl}; "
                if sweep.ablations else "")
             + ("compute " if status.finished(sweep, seeds, ablate) else "compute so far ")
             + f"{status.compute_hours:.1f} h (wall clock of its runs)"
             + (f"; code: {', '.join(f'`{c}`' for c in sorted(status.commits))}."
                if status.commits else ".")]
    if status.best_params:
        lines += ["", "HTL configuration chosen on val: " + ", ".join(
            f"`{k}={v}`" for k, v in sorted(status.best_params.items())) + "."]
    if status.parent_run_id is None:
        return "\n".join(lines + ["", "*Not started.*", ""]), status
    runs = load_runs(uri, sweep.base.tracking.experiment,
                     f"tags.`{SWEEP_TAG}` = '{sweep.settings.name}' and "
                     f"tags.`mlflow.parentRunId` = '{status.parent_run_id}' and "
                     f"tags.`{ROLE_TAG}` = 'confirm'")
    if runs.empty:
        return "\n".join(lines + ["", "*No confirmation run finished yet.*", ""]), status
    table, verdict = method_table(runs, sweep.settings.comparators)
    status.verdict = verdict
    lines += ["", "Test split (never seen by tuning), best-on-val checkpoint of each run; mean "
              "[95% Student-t CI] over seeds; Δ = paired difference per seed, in points "
              "(×100):", "", markdown_table(table), ""]
    if not status.complete(groups, seeds):
        lines += ["*Incomplete: the numbers above cover the runs finished so far.*", ""]
    lines += [f"- {v}" for v in verdict_lines(verdict)] + [""]
    lines += ablation_lines(sweep, uri, status, ablate)
    lines += enrichment_lines(sweep, log) + [""]
    return "\n".join(lines), status


def goal_lines(readings: list[tuple[str, dict, bool]]) -> list[str]:
    """The issue's goal over all settings, from each setting's (name, verdict, whether its
    verdict's runs have every seed): HTL ahead of *both* ERM and the placebo by ≥ 2 points of
    one metric (thresholded Jaccard or Dice), each 95% CI excluding 0, in at least one setting;
    and never significantly worse than either."""
    met, worse, pending = [], [], []
    for setting, verdict, complete in readings:
        for metric, label in (("thresholded_jaccard", "thr-J"), ("dice", "Dice")):
            ahead = [verdict.get((b, metric), (math.nan,) * 3) for b in ("ERM", "random")]
            if all(lo > 0 and d >= GOAL for d, lo, _ in ahead):
                met.append(f"{setting} ({label})")
        worse += [f"{setting}: HTL − {b}, {'thr-J' if m == 'thresholded_jaccard' else 'Dice'}"
                  for (b, m), (_, _, hi) in verdict.items() if hi < 0]
        if not complete:
            pending.append(setting)
    reading = (f"**met** in {', '.join(met)}" if met else "**not met** in any setting") + (
        " so far" if pending else "")
    lines = [f"**The goal** — HTL ahead of both ERM and the random placebo by ≥ 2 points of "
             f"thresholded Jaccard or Dice, 95% CIs excluding 0, in at least one setting: "
             f"{reading}. Significantly worse than ERM or the placebo: "
             f"{'; '.join(worse) if worse else 'nowhere'}."]
    if pending:
        lines.append(f"Still without every seed of HTL, ERM and the placebo: "
                     f"{', '.join(pending)}.")
    return [" ".join(lines), ""]


def results_markdown(sweeps: list[Sweep], uri: str, seeds: int, command: str,
                     log: Callable[[str], None] = print, ablate: bool = True
                     ) -> tuple[str, bool]:
    """The generated block of the results page, and whether every setting is complete (with
    `ablate`, its ablations too)."""
    from htl_ray import tracking

    sections, complete, hours, readings = [], True, 0.0, []
    for sweep in sweeps:
        text, status = setting_section(sweep, uri, seeds, log, ablate)
        sections.append(text)
        hours += status.compute_hours
        readings.append((status.setting, status.verdict,
                         status.complete([g for g in _groups(sweep) if g in VERDICT_GROUPS],
                                         seeds)))
        complete &= status.finished(sweep, seeds, ablate)
    head = ["## Reproduction protocol: HTL attention vs ERM, the placebo and loss-based "
            "attention", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit "
            f"`{_short(tracking.git_commit())}` from MLflow `{tracking.redact(uri)}` by",
            "", "```bash", command, "```", "",
            f"Seeds 0–{seeds - 1} per method; {hours:.1f} compute hours "
            + ("in all. **Complete.**" if complete else "so far. **In progress** — run the "
               "same command to continue; finished runs are skipped."), "", *goal_lines(readings)]
    return "\n".join(head + sections), complete


def _short(commit: str) -> str:
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def write_results(path: Path, block: str) -> None:
    """Replace the generated block of `path` (or append it), keeping the rest of the page."""
    text = path.read_text() if path.is_file() else ""
    wrapped = f"{BEGIN}\n{block.rstrip()}\n{END}\n"
    before, begin, rest = text.partition(BEGIN)
    if begin and END in rest:
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + wrapped + (("\n" + after) if after else "")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + wrapped
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_protocol(sweep_files: list[str | Path], seeds: int, results: str | Path, *,
                 report_only: bool = False, overrides: list[str] | None = None,
                 archive: str | Path | None = None, archive_every_s: float = 120.0,
                 ablate: bool = True, log: Callable[[str], None] = print) -> bool:
    """Run (or continue) every setting's sweep and confirmation runs, regenerating the results
    page after each; then, with `ablate`, every setting's ablations (val only: after all the
    verdict's runs, which matter more). Returns whether the protocol is complete. With
    `archive`, the finished
    runs it holds are first imported into MLflow (from an earlier sitting on another machine)
    and every run that ended is written to it (`htl_ray.archive`), every `archive_every_s`
    seconds while the protocol trains and after each confirmation run: commit it to keep
    them."""
    from htl_ray import tracking
    from htl_ray.archive import PeriodicExport, export_sweep, import_sweep

    if seeds < 1:
        raise UserError(f"--seeds: expected at least 1, got {seeds}")
    sweeps = [load_sweep(f, overrides) for f in sweep_files]   # every file checked first
    names = [s.settings.name for s in sweeps]
    if len(set(names)) < len(names):
        raise UserError(f"sweep names must differ across the protocol, got {names}")
    uri = tracking.resolve_tracking_uri(sweeps[0].base.tracking.uri)
    command = " ".join(["htl-ray reproduce", *map(str, sweep_files), f"--seeds {seeds}",
                        f"--results {results}", *([] if ablate else ["--no-ablations"]),
                        *(f"--set {shlex.quote(o)}" for o in overrides or [])])
    results = Path(results)
    archive = Path(archive) if archive is not None else None
    if archive is not None:
        command += f" --archive {archive}"
        for sweep in sweeps:
            import_sweep(sweep, uri, archive, log)

    def refresh() -> bool:
        if archive is not None:        # first: the runs matter more than the page
            for sweep in sweeps:
                export_sweep(sweep, uri, archive, log)
        block, complete = results_markdown(sweeps, uri, seeds, command, log, ablate)
        write_results(results, block)
        log(f"[htl-ray] reproduce: results written to {results}")
        return complete

    def refresh_between_runs() -> None:
        """After each confirmation run, so the page follows a protocol that takes hours; a page
        that cannot be written must not stop the runs (the final rewrite reports it)."""
        try:
            refresh()
        except Exception as exc:  # noqa: BLE001
            log(f"[htl-ray] reproduce: could not rewrite {results} (runs go on): {exc}")

    if report_only:
        return refresh()
    complete = False
    exporting = (PeriodicExport(sweeps, uri, archive, archive_every_s, log)
                 if archive is not None else contextlib.nullcontext())
    try:
        with exporting:
            for sweep in sweeps:
                status = setting_status(sweep, uri)
                if status.complete(_groups(sweep), seeds):
                    log(f"[htl-ray] reproduce: {sweep.settings.name} complete, skipped")
                    continue
                resume = (sweep.directory / STATE_FILE).is_file()
                log(f"[htl-ray] reproduce: {sweep.settings.name} "
                    f"({'continuing' if resume else 'starting'}; {sweep.base.supervision.setting} "
                    f"setting, {sweep.settings.num_samples} trials, then "
                    f"{len(_groups(sweep))} × {seeds} confirmation runs)")
                outcome = run_sweep(sweep, resume=resume, confirm=seeds, log=log,
                                    on_confirmed=refresh_between_runs)
                if outcome.interrupted:
                    log("[htl-ray] reproduce: interrupted; run the same command to continue")
                    return False
            for sweep in sweeps if ablate else []:
                if setting_status(sweep, uri).ablations_complete(sweep):
                    continue
                log(f"[htl-ray] reproduce: {sweep.settings.name} ablations "
                    f"({', '.join(sweep.ablations)}; val only)")
                outcome = run_sweep(sweep, resume=True, confirm=seeds, ablate=True, log=log,
                                    on_confirmed=refresh_between_runs)
                if outcome.interrupted:
                    log("[htl-ray] reproduce: interrupted; run the same command to continue")
                    return False
    finally:
        # also when stopped or failed part-way: the page shows everything finished so far
        try:
            complete = refresh()
        except Exception as exc:  # noqa: BLE001 - never hide the error that stopped the run
            log(f"[htl-ray] reproduce: could not rewrite {results}: {exc}")
    return complete
