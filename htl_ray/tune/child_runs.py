"""The one executor of a sweep's follow-up runs: a plan of training runs, each a child run of
the sweep's parent MLflow run with a role (confirmation, ablation), trained one after another.

A run already finished is kept — here (its run directory), or elsewhere (a scored MLflow run
imported from the protocol archive) — once it is checked to have trained the configuration
planned now (`tune.same_config`); an unfinished one resumes from its checkpoint. The plans
themselves are made above this module, by `tune.confirm` and `tune.ablation`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from htl_ray.config import ExperimentConfig
from htl_ray.run_dir import RunDir
from htl_ray.tracking.schema import (
    CONFIRM_ROLE,
    GROUP_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from htl_ray.tune.reuse import reuse_run
from htl_ray.tune.roles import scored_key, scored_runs
from htl_ray.tune.same_config import refuse_changed_mlflow_run, refuse_changed_run_dir
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import TrialRecord

logger = logging.getLogger(__name__)


class PlannedRun(NamedTuple):
    name: str               # run name, and run directory under the sweep's runs/
    group: str              # confirmation: the method group; ablation: the variant
    seed: int
    config: ExperimentConfig


def train_child_runs(sweep: Sweep, plan: list[PlannedRun], *, role: str, best: TrialRecord,
                     parent_run_id: str, runs_dir: Path,
                     on_trained: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train a plan as child runs of the sweep with the role `role` (confirm, ablation): a run
    finished here or elsewhere (imported from the archive) is kept, after checking it ran the
    config planned now; an unfinished one resumes from its checkpoint; `on_trained` is called
    after each run trained. Returns the MLflow run ids per group."""
    from htl_ray.train.trainer import evaluate_run, run_training

    out: dict[str, list[str]] = {}
    for name, group, seed, cfg in plan:
        run = RunDir(runs_dir / name)
        refuse_changed_run_dir(run, cfg, role)
        finished = finished_here(run)
        if not finished:
            # trained elsewhere and imported from the archive (scored, or not found) — also
            # when this machine had begun it and lost it: the finished one is kept
            finished = finished_elsewhere(sweep, PlannedRun(name, group, seed, cfg),
                                          parent_run_id=parent_run_id, role=role)
            if finished:
                logger.info(f"[htl-ray] {role} {name}: finished elsewhere (MLflow run "
                            f"{finished})")
                out.setdefault(group, []).append(finished)
                continue
            # or an earlier round trained it: the same configuration and seed (`reuse:`)
            reused = None if role != CONFIRM_ROLE or run.has_state() else reuse_run(
                sweep, PlannedRun(name, group, seed, cfg), parent_run_id=parent_run_id,
                trial_id=best.trial_id)
            if reused:
                out.setdefault(group, []).append(reused)
                if on_trained is not None:
                    on_trained()
                continue
        if finished:
            logger.info(f"[htl-ray] {role} {name}: already finished (MLflow run {finished})")
            if cfg.train.evaluate_test and not _has_test_metrics(run, finished):
                evaluate_run(run.path)                # its test evaluation had failed
            out.setdefault(group, []).append(finished)
            continue
        logger.info(f"[htl-ray] {role} {name}: {group} config, seed {seed}")
        outcome = run_training(cfg, resume=run.has_state(), tags={
            PARENT_TAG: parent_run_id, SWEEP_TAG: sweep.settings.name,
            ROLE_TAG: role, GROUP_TAG: group, TRIAL_TAG: best.trial_id,
            "mlflow.runName": f"{group} s{seed} ({best.name})"})
        out.setdefault(group, []).append(outcome.mlflow_run_id)
        if on_trained is not None:
            on_trained()
    return out


def finished_here(run: RunDir) -> str | None:
    """The MLflow run id of the run directory's run when it FINISHED."""
    state = run.state()
    if state is None:
        return None
    from htl_ray import tracking

    if state.mlflow_run_id and \
            tracking.run_status(state.tracking_uri, state.mlflow_run_id) == "FINISHED":
        return state.mlflow_run_id
    return None


def finished_elsewhere(sweep: Sweep, planned: PlannedRun, *, parent_run_id: str,
                       role: str = CONFIRM_ROLE) -> str | None:
    """A confirmation (or ablation) run FINISHED and scored (`scored_key`) in MLflow without a
    run directory here: trained on another machine and imported from the protocol archive. It
    must have run the configuration planned now (`refuse_changed_mlflow_run`)."""
    cfg = planned.config
    runs = scored_runs(cfg.tracking.uri, cfg.tracking.experiment, sweep=sweep.settings.name,
                       role=role, group=planned.group, seed=planned.seed,
                       parent_run_id=parent_run_id)
    if not runs:
        return None
    refuse_changed_mlflow_run(runs[0], cfg, planned.name)
    return runs[0].info.run_id


def _has_test_metrics(run: RunDir, run_id: str) -> bool:
    from htl_ray.tracking import client as tracking_client

    uri = run.require_state().tracking_uri
    return scored_key(CONFIRM_ROLE) in tracking_client(uri).get_run(run_id).data.metrics
