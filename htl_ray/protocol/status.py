"""What MLflow holds of the protocol: per setting, its sweep's trials, confirmation runs and
ablations that count as done, their compute and code, and the runs the page is made from.

Only this sweep's runs count: those nested under the parent run its directory names, not those
of an abandoned sweep of the same name in the same store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from htl_ray.analysis.stats import Verdict
from htl_ray.compare import load_runs, run_metrics
from htl_ray.tracking.outcome import TrialOutcome, counts_as_done, trial_outcome
from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import (
    ABLATION_ROLE,
    CONFIRM_ROLE,
    GIT_COMMIT_TAG,
    GROUP_TAG,
    REUSED_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    TRIAL_ROLE,
)
from htl_ray.tune.ablation import matches_variant, same_as_chosen
from htl_ray.tune.confirm import planned_groups
from htl_ray.tune.prior_trials import typed_params
from htl_ray.tune.space import Sweep
from htl_ray.tune.state import read_in
from htl_ray.tune.sweep import SCORED_ROLES, best_params, scored_key


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
    reused: int = 0        # confirmation runs copied from an earlier round (not trained here)
    best_params: dict[str, str] = field(default_factory=dict)
    commits: set[str] = field(default_factory=set)  # code that trained its runs (and resumes)
    # (baseline, metric) → HTL's paired difference on test, read against the goal
    verdict: dict[tuple[str, str], Verdict] = field(default_factory=dict)

    def complete(self, groups: list[str], seeds: int) -> bool:
        return all(self.confirm_finished.get(g, 0) >= seeds for g in groups)

    def ablations_complete(self, sweep: Sweep) -> bool:
        return all(self.ablation_finished.get(name, 0) >= sweep.settings.ablation_seeds
                   for name in sweep.ablations if name not in self.ablations_same)

    def finished(self, sweep: Sweep, seeds: int, ablate: bool = True) -> bool:
        """Nothing left for the protocol to train in this setting: every confirmation run
        and, with `ablate`, every ablation."""
        return self.complete(groups(sweep, self.best_params), seeds) and (
            not ablate or self.ablations_complete(sweep))


def groups(sweep: Sweep, best_params: dict[str, str] | None = None) -> list[str]:
    """The confirmation groups of a setting: the chosen configuration and each comparator —
    once the sweep has chosen (`best_params`, as its parent run records them), those its
    confirmation plan trains (`tune.confirm.planned_groups`: not one that is `best` again)."""
    if not best_params:
        return ["best", *sweep.comparator_groups]
    return list(planned_groups(sweep, typed_params(sweep, best_params)))


def short_commit(commit: str) -> str:
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def _runs_of(sweep: Sweep, parent_run_id: str, **more: str) -> RunQuery:
    # this sweep's runs only: not those of an abandoned sweep of the same name in this store
    return RunQuery(sweep=sweep.settings.name, parent_run_id=parent_run_id, **more)


def setting_status(sweep: Sweep, uri: str) -> SettingStatus:
    from htl_ray.tracking import client as tracking_client

    status = SettingStatus(sweep.settings.name, sweep.base.supervision.setting,
                           trials_asked=sweep.settings.num_samples)
    state = read_in(sweep.directory)
    if state is None:
        return status
    status.parent_run_id = state.parent_run_id
    client = tracking_client(uri)
    exp = client.get_experiment_by_name(sweep.base.tracking.experiment)
    if exp is None:
        return status
    parent = client.get_run(status.parent_run_id)
    status.best_params = best_params(parent.data.params)
    if status.best_params and sweep.ablations:
        status.ablations_same = same_as_chosen(sweep, typed_params(sweep, status.best_params))
    seeds: dict[tuple[str, str], set[str]] = {}   # (role, group) → distinct seeds finished
    for run in search(client, exp.experiment_id, _runs_of(sweep, status.parent_run_id)):
        role = run.data.tags.get(ROLE_TAG)
        if role == SWEEP_ROLE or not (run.info.status == "FINISHED" or (
                role == TRIAL_ROLE and _trial_ended(client, run, bool(status.best_params)))):
            continue
        if REUSED_TAG in run.data.tags:
            status.reused += 1                    # its hours are the earlier round's
        elif run.info.end_time and run.info.start_time:
            status.compute_hours += (run.info.end_time - run.info.start_time) / 3.6e6
        status.commits |= {short_commit(v) for k, v in run.data.tags.items()
                           if k.startswith(GIT_COMMIT_TAG)}
        if role == TRIAL_ROLE:
            status.trials_finished += 1           # trials ASHA stopped early have ended too
        elif role in SCORED_ROLES and scored_key(role) in run.data.metrics:
            group = run.data.tags.get(GROUP_TAG, "?")
            if role == ABLATION_ROLE and not matches_variant(sweep, group, run.data.params):
                continue              # a variant since edited: its old runs are not its runs
            seeds.setdefault((role, group), set()).add(run.data.params.get("run.seed", "?"))
    for (role, group), done in seeds.items():
        counts = status.confirm_finished if role == CONFIRM_ROLE else status.ablation_finished
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


def confirmation_runs(sweep: Sweep, uri: str, parent_run_id: str) -> pd.DataFrame:
    """The sweep's FINISHED confirmation runs (`load_runs` rows)."""
    return load_runs(uri, sweep.base.tracking.experiment,
                     query=_runs_of(sweep, parent_run_id, role=CONFIRM_ROLE))


def val_by_seed(sweep: Sweep, uri: str, parent_run_id: str, *, role: str, group: str
                ) -> dict[str, dict[str, float]]:
    """Seed → val metrics (best epoch) of the sweep's finished runs of one role and group; of
    an ablation, only runs of the variant as the sweep file names it now. A seed trained twice
    (on two machines) is its newest run."""
    runs = load_runs(uri, sweep.base.tracking.experiment,
                     query=_runs_of(sweep, parent_run_id, role=role, group=group))
    out: dict[str, dict[str, float]] = {}
    for r in runs.itertuples():             # MLflow returns the newest run first
        if "best/val/dice" in r.metrics and str(r.seed) not in out and (
                role != ABLATION_ROLE or matches_variant(sweep, group, r.params)):
            out[str(r.seed)] = run_metrics(r.metrics, "val")
    return out
