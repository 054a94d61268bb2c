"""The HTL report of a setting's chosen configuration (its seed-0 confirmation run, beside ERM
seed 0), built once and reused: the results page is rewritten after every run, the report only
when its runs changed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from htl_ray.run_dir import RunDir
from htl_ray.tune.space import Sweep
from htl_ray.tune.sweep import confirm_run_name


@dataclass(frozen=True)
class ChosenReport:
    """The report of `run`: its enrichment table and where its page is (None when it was
    built on another machine: its table came with the protocol archive), or why it could not
    be built."""

    run: Path
    enrichment: pd.DataFrame | None = None
    html: Path | None = None
    error: str | None = None


def _newest_file(*run_dirs: Path | None) -> float:
    """Modification time of the newest file in the run directories: a report older than it
    is stale (the run went on, or its ERM baseline appeared)."""
    return max((p.stat().st_mtime for d in run_dirs if d is not None
                for p in d.rglob("*") if p.is_file()), default=math.inf)


def chosen_report(sweep: Sweep) -> ChosenReport | None:
    """The report of the best configuration's seed-0 run, from the cache in the sweep's
    `report/` folder while it is newer than the runs, else built there; None before that run
    exists here or in the archive."""
    from htl_ray.report.build import build_report

    runs_dir = sweep.directory / "runs"
    run, base = runs_dir / confirm_run_name("best", 0), runs_dir / confirm_run_name("erm", 0)
    out = sweep.directory / "report"
    cached = out / "enrichment.csv"
    here = RunDir(run).has_state()
    if not here and not cached.is_file():
        return None
    baseline = base if RunDir(base).has_state() else None
    if cached.is_file() and (not here or cached.stat().st_mtime >= _newest_file(run, baseline)):
        # the page is rewritten after every run: build it once; a seed-0 run trained on
        # another machine left its table in the protocol archive
        enr = pd.read_csv(cached)
    else:
        try:
            enr = build_report(run, baseline, out).enrichment
        except (FileNotFoundError, ValueError, KeyError) as exc:
            return ChosenReport(run, error=str(exc))
    html = out / "report.html"
    return ChosenReport(run, enr, html if html.is_file() else None)
