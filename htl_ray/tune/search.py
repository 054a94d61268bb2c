"""The search: a Ray Tune run of trials, suggested by Optuna, scheduled by FIFO or ASHA.

Builds the Tuner (or restores the one saved in the sweep directory), tells a new search the
trials that ended on another machine (`tune.prior_trials`), runs it, reads its trials back,
tells an interruption (Ctrl-C: Tune saves its state and returns) from an end, closes the trial
runs Tune left open (`tune.trial_runs`) and summarises the search (`tune.summary`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import htl_ray.tune.parent as parent
import htl_ray.tune.state as state
from htl_ray.tracking.schema import INTERRUPTED_TAG
from htl_ray.tune.prior_trials import (
    archived_trials,
    fill_rungs,
    mark_retried,
    retry_points,
    tell_searcher,
)
from htl_ray.tune.space import Sweep
from htl_ray.tune.state import SweepState
from htl_ray.tune.study import TrialRecord
from htl_ray.tune.summary import summarise
from htl_ray.tune.trial import FINISHED_KEY, run_trial

logger = logging.getLogger(__name__)

TUNE_DIR = "tune"     # Ray Tune's experiment state in the sweep directory (`state.LAYOUT`)


@dataclass
class SearchResult:
    best: TrialRecord | None
    records: list[TrialRecord]
    plots: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False


def max_concurrent(sweep: Sweep, cluster_cpus: float) -> int:
    from htl_ray.cluster import cpus_needed

    s = sweep.settings.max_concurrent
    if s != "auto":
        return int(s)
    return max(1, int(math.floor(cluster_cpus / max(cpus_needed(sweep.base), 1e-9) + 1e-9)))


def make_scheduler(sweep: Sweep):
    """FIFO, or ASHA with its rungs strictly before the last epoch and no stop at the end: a
    trial that reaches its last epoch returns on its own, so its run ends FINISHED with its
    best metrics (a scheduler stop at the last report would kill it before that)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = sweep.settings
    if s.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration",
                         max_t=max(sweep.base.train.epochs - 1, s.grace_period),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         stop_last_trials=False)


def build_tuner(sweep: Sweep, *, base_raw: dict[str, Any], uri: str, parent_run_id: str,
                resume: bool, concurrency: int, prior: list[TrialRecord] = ()):
    """A new Tuner (which knows the `prior` trials, run elsewhere, runs those that failed there
    again and asks only for the rest),
    or with `resume` the one saved in the sweep directory."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from htl_ray.tune.trial_runs import CloseStoppedTrialRuns

    s, directory = sweep.settings, sweep.directory
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base_raw, sweep=sweep,
                             runs_dir=str(directory / "runs"),
                             parent_run_id=parent_run_id, metric=s.metric),
        # the trial function only drives its TorchTrainer, whose workers hold the CPUs; Tune
        # refuses an empty request, so the trial asks for 1 MiB of memory and no CPU
        {"CPU": 0, "memory": 2**20})
    # save Tune's experiment state often: a driver killed between two saves loses the trials
    # started in between (their runs end up tagged htl.orphaned and are re-run)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    tune_dir = directory / TUNE_DIR
    if resume and tune_dir.is_dir():
        from ray.tune import Tuner

        return Tuner.restore(str(tune_dir), trainable, resume_unfinished=True,
                             resume_errored=True)
    import optuna

    sampler = optuna.samplers.TPESampler(seed=s.seed)
    optuna_search = OptunaSearch(space=dict(sweep.space), metric=s.metric, mode=s.mode,
                                 sampler=sampler,
                                 points_to_evaluate=retry_points(list(prior)) or None)
    told = tell_searcher(optuna_search, sampler, list(prior), space=dict(sweep.space),
                         mode=s.mode)
    searcher = ConcurrencyLimiter(optuna_search, max_concurrent=concurrency)
    scheduler = make_scheduler(sweep)
    fill_rungs(scheduler, list(prior), s.mode)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=searcher,
                                    scheduler=scheduler,
                                    num_samples=s.num_samples - told),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(directory), verbose=1,
                                  callbacks=[CloseStoppedTrialRuns(uri, parent_run_id)]))


def trial_records(results, sweep: Sweep) -> list[TrialRecord]:
    """Tune's results of the search's trials, as records."""
    metric = sweep.settings.metric
    out = []
    for res in results:
        hist = getattr(res, "metrics_dataframe", None)
        history = []
        if hist is not None and metric in hist.columns:
            # the final result repeats the best epoch's value: keep the epochs only
            if FINISHED_KEY in hist.columns:
                hist = hist[hist[FINISHED_KEY].fillna(0) != 1]
            history = [float(v) for v in hist[metric].tolist()]
        last = res.metrics or {}
        trial_id = last.get("trial_id") or Path(res.path).name
        params = {k: v for k, v in (res.config or {}).items() if k in sweep.space}
        out.append(TrialRecord(
            trial_id=str(trial_id), name=str(last.get("trial_name") or trial_id),
            params=params, history=history, finished=bool(last.get(FINISHED_KEY)),
            error=str(res.error) if res.error else None,
            mlflow_run_id=last.get("mlflow_run_id")))
    return out


def was_interrupted(records: list[TrialRecord], *, num_samples: int, scheduler: str,
                    stops_closed: bool, open_ids: set[str]) -> bool:
    """Whether the search returned because of a Ctrl-C (Tune saves its state and returns):
    fewer trials than asked for; or a trial that neither finished nor failed — under FIFO, or
    under ASHA once its stops close their runs as they happen (`stops_closed`), so that a
    trial whose run is still open (`open_ids`) was cut short, not stopped. A trial that never
    reported an epoch cannot have been stopped by a scheduler: it was cut short."""
    if len(records) < num_samples:
        return True
    unended = [r for r in records if not r.finished and not r.error]
    if scheduler == "fifo" or any(not r.history for r in unended):
        return bool(unended)
    return stops_closed and bool({r.trial_id for r in unended} & open_ids)


def told_and_not(prior: list[TrialRecord], sweep_state: SweepState
                 ) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """For a restored search: the archived trials it was told when it was created (they count
    among its trials) and those imported since (they do not: it would draw their budget again)."""
    told = set(sweep_state.told_archived_trials)
    return ([r for r in prior if r.trial_id in told],
            [r for r in prior if r.trial_id not in told])


def run_search(sweep: Sweep, *, base_raw: dict[str, Any], uri: str, parent_run_id: str,
               resume: bool, concurrency: int, stops_closed: bool) -> SearchResult:
    """The Tune search and its summary; an interrupted search ends its parent run KILLED."""
    from htl_ray.tune.trial_runs import close_open_trial_runs, open_trial_ids

    s, directory = sweep.settings, sweep.directory
    restore = resume and (directory / TUNE_DIR).is_dir()
    # a sweep whose Tune state predates the callback restores without it (Tune keeps the
    # RunConfig it saved): there, a stopped trial's run is still open after the search
    stops_closed = stops_closed or not restore
    # trials that ended on another machine (imported from the protocol archive): a new search
    # is told them and asks only for the rest; a restored one counts those it was told when it
    # was created (ones imported since are not part of its search)
    prior = archived_trials(sweep, uri, parent_run_id) if resume else []
    state_path = state.path_in(directory)
    if restore:
        told, ignored = told_and_not(prior, state.read(state_path))
        retried: list[TrialRecord] = []
        if ignored:
            logger.info(f"[htl-ray] sweep {s.name}: {len(ignored)} archived trial(s) imported "
                        "after this machine's search began are not part of it (not counted)")
    else:
        # a new search runs the trials that failed elsewhere again (as --resume does here)
        told = [r for r in prior if not r.error]
        retried = [r for r in prior if r.error]
    remaining = s.num_samples - len(told)
    if resume and not restore:
        # a new search (its stopped trials' runs closed as they stop), told these trials
        state.update(state_path, stops_closed=True,
                     told_archived_trials=tuple(r.trial_id for r in told))
        mark_retried(uri, retried)
        if prior:
            logger.info(f"[htl-ray] sweep {s.name}: {len(prior)} trial(s) ended elsewhere "
                        f"(archive), {max(remaining, 0)} still to run; the search continues "
                        "from all of them")
        if retried:
            logger.info(f"[htl-ray] sweep {s.name}: {len(retried)} of them failed there and "
                        "run again first, with the same values (their archived runs: "
                        "htl.retried)")
    if remaining > 0 or restore:
        results = build_tuner(sweep, base_raw=base_raw, uri=uri, parent_run_id=parent_run_id,
                              resume=resume, concurrency=concurrency, prior=prior).fit()
        records = trial_records(results, sweep)
    else:
        records = []
    ended = sum(r.finished or bool(r.error) for r in records)
    interrupted = was_interrupted(records, num_samples=remaining, scheduler=s.scheduler,
                                  stops_closed=stops_closed,
                                  open_ids=open_trial_ids(uri, parent_run_id))
    closed = close_open_trial_runs(uri, parent_run_id, interrupted=interrupted,
                                   known={r.trial_id for r in records})
    records = told + records
    stopped = sum(not r.finished and not r.error for r in records) if not interrupted else 0
    if stopped:
        logger.info(f"[htl-ray] {stopped} trial(s) stopped early by the scheduler (MLflow: "
                    "KILLED)")
    if closed.get(INTERRUPTED_TAG):
        logger.info(f"[htl-ray] {closed[INTERRUPTED_TAG]} trial run(s) cut short (MLflow: "
                    f"KILLED, {INTERRUPTED_TAG})")
    best, plots = summarise(sweep, records, out_dir=directory / "summary", uri=uri,
                            parent_run_id=parent_run_id, final=not interrupted)
    if interrupted:
        parent.end_interrupted(uri, parent_run_id)
        logger.info(f"[htl-ray] sweep interrupted after {ended + len(told)} of {s.num_samples} "
                    f"trials; continue it with: htl-ray tune {sweep.path} --resume")
    return SearchResult(best, records, plots, interrupted)
