"""A sweep's summary: its best trial, the study's tables and plots, in files and in the parent
MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

from htl_ray.config import dump_config
from htl_ray.tracking.schema import BEST_TRIAL_ID_TAG, BEST_TRIAL_TAG
from htl_ray.tune.roles import BEST_PREFIX
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import (
    TrialRecord,
    build_study,
    summary_markdown,
    trials_table,
    write_plots,
)

logger = logging.getLogger(__name__)


def best_record(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The trial with the best value (`mode`: max or min) among those scored without error."""
    scored = [r for r in records if r.value(mode) is not None and not r.error]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.value(mode))


def summarise(sweep: Sweep, records: list[TrialRecord], *, out_dir: Path, uri: str,
              parent_run_id: str, final: bool = True
              ) -> tuple[TrialRecord | None, dict[str, Path]]:
    """Best config, study summary, trials table and Optuna plots → files and the parent run.
    The best config becomes the parent's `best.*` params only when `final`: MLflow params
    cannot change, and an interrupted sweep's best so far may not be its choice."""
    from htl_ray import tracking

    s = sweep.settings
    best = best_record(records, s.mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = build_study(records, sweep.space, s.mode, s.name)
    plots, skipped = write_plots(study, out_dir / "plots")
    table = trials_table(records, s.mode, s.metric)
    table.to_csv(out_dir / "trials.csv", index=False)
    (out_dir / "study_summary.md").write_text(
        summary_markdown(s.name, s.metric, s.mode, table, best, skipped))
    metrics: dict[str, float] = {"sweep/trials": len(records),
                                 "sweep/finished": sum(r.finished for r in records)}
    if best is not None:
        cfg = sweep.config_for(best.params)
        dump_config(cfg, out_dir / "best_config.yaml")
        tracking.log_artifact(uri, parent_run_id, out_dir / "best_config.yaml")
        metrics[f"best/{s.metric}"] = best.value(s.mode)
        tracking.set_tags(uri, parent_run_id, {BEST_TRIAL_TAG: best.name,
                                               BEST_TRIAL_ID_TAG: best.trial_id})
        from mlflow.entities import Param

        from htl_ray.tracking import client as tracking_client

        if final:
            tracking_client(uri).log_batch(parent_run_id, params=[
                Param(BEST_PREFIX + k, str(v)) for k, v in sorted(best.params.items())])
    tracking.log_metrics(uri, parent_run_id, metrics, step=0)
    for name in ("study_summary.md", "trials.csv"):
        tracking.log_artifact(uri, parent_run_id, out_dir / name)
    for path in plots.values():
        tracking.log_artifact(uri, parent_run_id, path, "plots")
    if best is not None:
        logger.info(f"[htl-ray] best trial {best.name}: {s.metric} {best.value(s.mode):.4f}")
    logger.info(f"[htl-ray] sweep summary: {out_dir / 'study_summary.md'}; plots in "
                f"{out_dir / 'plots'}")
    return best, plots
