"""htl_ray.protocol.report_cache: when the chosen configuration's report is read from the
sweep's `report/` cache and when it is built again, decided by the modification times of real
files — the cached enrichment table (CSV), the seed-0 confirmation run and its ERM baseline.
A run that cannot be built (its dataset is gone) shows where a rebuild was attempted: its error
comes back in the ChosenReport instead of an exception. No Ray, no MLflow, no model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from htl_ray.config import load_config
from htl_ray.protocol.report_cache import ChosenReport, chosen_report
from htl_ray.tune.space import Sweep, SweepSettings
from htl_ray.tune.sweep import confirm_run_name

ENRICHMENT = pd.DataFrame({"attribute": ["site", "sex"], "group": ["head/neck", "female"],
                           "odds_ratio": [4.5, 0.9], "p_adjusted": [0.001, 0.8]})


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    settings = SweepSettings(name="chosen", storage_path=str(tmp_path / "sweeps"))
    return Sweep(path=tmp_path / "sweep.yaml", base=load_config(None, []), base_overrides=[],
                 settings=settings, space={})


def _run(sweep: Sweep, group: str, mtime: float) -> Path:
    """A confirmation run directory whose dataset is not here (a rebuild fails, naming it),
    every file dated `mtime`."""
    run = sweep.directory / "runs" / confirm_run_name(group, 0)
    (run / "checkpoint_0").mkdir(parents=True)
    cfg = load_config(None, [f"data.path={sweep.directory / 'gone'}"])
    (run / "htl_run.json").write_text(json.dumps({"mlflow_run_id": "x" * 32,
                                                  "config": cfg.to_dict()}))
    (run / "checkpoint_0" / "meta.json").write_text('{"epoch": 0}')
    for f in run.rglob("*"):
        os.utime(f, (mtime, mtime))
    return run


def _cache(sweep: Sweep, mtime: float, html: bool = False) -> Path:
    out = sweep.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    ENRICHMENT.to_csv(out / "enrichment.csv", index=False)
    os.utime(out / "enrichment.csv", (mtime, mtime))
    if html:
        (out / "report.html").write_text("<html></html>")
    return out / "enrichment.csv"


T = 1_700_000_000.0


def test_nothing_before_the_chosen_run_exists(sweep):
    assert chosen_report(sweep) is None
    _run(sweep, "erm", T)                          # the baseline alone is not enough
    assert chosen_report(sweep) is None


def test_a_cache_from_the_archive_is_used_when_the_run_is_not_here(sweep):
    _cache(sweep, T)
    report = chosen_report(sweep)
    assert isinstance(report, ChosenReport) and report.error is None
    assert report.run == sweep.directory / "runs" / confirm_run_name("best", 0)
    pd.testing.assert_frame_equal(report.enrichment, ENRICHMENT)
    assert report.html is None                     # its page was built on another machine
    _cache(sweep, T, html=True)
    assert chosen_report(sweep).html == sweep.directory / "report" / "report.html"


def test_a_cache_newer_than_the_run_and_its_baseline_is_not_rebuilt(sweep):
    _run(sweep, "best", T)
    _run(sweep, "erm", T + 10)
    _cache(sweep, T + 10)                          # as new as the newest file: still valid
    report = chosen_report(sweep)
    assert report.error is None                    # the broken run was not built again
    pd.testing.assert_frame_equal(report.enrichment, ENRICHMENT)


@pytest.mark.parametrize("newer", ["best", "erm"])
def test_a_run_or_baseline_file_newer_than_the_cache_rebuilds_it(sweep, newer):
    _run(sweep, "best", T)
    _run(sweep, "erm", T)
    cached = _cache(sweep, T + 10)
    late = sweep.directory / "runs" / confirm_run_name(newer, 0) / "checkpoint_0" / "meta.json"
    os.utime(late, (T + 20, T + 20))               # the run went on after the report
    report = chosen_report(sweep)
    assert report.enrichment is None and report.html is None
    assert "gone is not here (the report reads images and metadata from it)" in report.error
    assert cached.is_file()                        # a failed rebuild keeps the old table


def test_a_run_without_a_cache_is_built_and_its_failure_returned(sweep):
    run = _run(sweep, "best", T)
    report = chosen_report(sweep)
    assert report.run == run and report.enrichment is None
    assert report.error.startswith(f"{run}: the run's dataset")
    (run / "htl_run.json").write_text("{}")        # a state that records no run
    assert "not a run directory" in chosen_report(sweep).error
