"""`htl-ray tune`: a Ray Tune sweep of training runs, searched by Optuna, tracked in MLflow.

Layout of a sweep directory (`sweep.storage_path/sweep.name`):
    sweep_state.json   the parent MLflow run and the tracking URI (what `--resume` re-joins)
    tune/              Ray Tune's experiment state (searcher and scheduler state included)
    runs/trial-<id>/   each trial's run directory: Ray Train checkpoints, HTL tables
    runs/confirm-*/    the `--confirm` runs
    summary/           best_config.yaml, study_summary.md, trials.csv, plots/*.png

One MLflow parent run per sweep; each trial and confirmation run is a child run
(`mlflow.parentRunId`), so the MLflow UI nests them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htl_ray.config import RESULT_NEUTRAL_KEYS, ConfigError, ExperimentConfig, dump_config
from htl_ray.tracking.schema import (
    ABLATION_ROLE,
    BEST_TRIAL_ID_TAG,
    BEST_TRIAL_TAG,
    DATASET_TAG,
    GIT_COMMIT_TAG,
    GROUP_TAG,
    INTERRUPTED_TAG,
    PARENT_TAG,
    RESUMED_AT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from htl_ray.train.checkpoints import read_run_state
from htl_ray.tune.prior_trials import (
    archived_trials,
    fill_rungs,
    mark_retried,
    retry_points,
    tell_searcher,
    typed_params,
)
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import (
    TrialRecord,
    build_study,
    summary_markdown,
    trials_table,
    write_plots,
)
from htl_ray.tune.trial import (
    FINISHED_KEY,
    run_trial,
)

STATE_FILE = "sweep_state.json"
ARCHIVED_STATE_KEY = "from_archive"   # sweep_state.json of a sweep imported from an archive
# sweep_state.json of a sweep whose Tune state holds tune.trial_runs.CloseStoppedTrialRuns
STOPS_CLOSED_STATE_KEY = "stops_closed_as_they_happen"
# sweep_state.json of a search created to continue a sweep: the archived trials it was told
TOLD_STATE_KEY = "told_archived_trials"
BEST_PREFIX = "best."   # the parent run's params of its chosen configuration (`summarise`)
VERDICT_GROUPS = ("best", "erm", "random")   # the verdict: best vs ERM and the placebo


@dataclass
class SweepOutcome:
    directory: Path
    parent_run_id: str
    tracking_uri: str
    best: TrialRecord | None
    records: list[TrialRecord]
    plots: dict[str, Path] = field(default_factory=dict)
    confirm_run_ids: dict[str, list[str]] = field(default_factory=dict)
    ablation_run_ids: dict[str, list[str]] = field(default_factory=dict)
    interrupted: bool = False


def max_concurrent(sweep: Sweep, cluster_cpus: float) -> int:
    from htl_ray.cluster import cpus_needed

    s = sweep.settings.max_concurrent
    if s != "auto":
        return int(s)
    return max(1, int(math.floor(cluster_cpus / max(cpus_needed(sweep.base), 1e-9) + 1e-9)))


def _absolute(base: ExperimentConfig, uri: str, runs_dir: Path) -> dict[str, Any]:
    """The base config with every path absolute: trials run in other working directories."""
    raw = base.to_dict()
    raw["data"]["path"] = str(Path(base.data.path).resolve())
    if base.model.init_checkpoint:
        raw["model"]["init_checkpoint"] = str(Path(base.model.init_checkpoint).resolve())
    raw["run"]["storage_path"] = str(runs_dir)
    raw["tracking"]["uri"] = uri
    return raw


def _parent_params(sweep: Sweep) -> dict[str, Any]:
    params = {f"sweep.{k}": v for k, v in vars(sweep.settings).items()}
    params.update({f"space.{k}": repr(d) for k, d in sweep.space.items()})
    params["sweep.base"] = sweep.base_source or "(defaults)"
    params["sweep.base_overrides"] = " ".join(sweep.base_overrides)
    return params


def _records(results, sweep: Sweep) -> list[TrialRecord]:
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


def _tuner(sweep: Sweep, directory: Path, base_raw: dict[str, Any], uri: str,
           parent_run_id: str, resume: bool, concurrency: int,
           prior: list[TrialRecord] = ()):
    """A new Tuner (which knows the `prior` trials, run elsewhere, runs those that failed there
    again and asks only for the rest),
    or with `resume` the one saved in the sweep directory."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from htl_ray.tune.trial_runs import CloseStoppedTrialRuns

    s = sweep.settings
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
    tune_dir = directory / "tune"
    if resume and tune_dir.is_dir():
        from ray.tune import Tuner

        return Tuner.restore(str(tune_dir), trainable, resume_unfinished=True,
                             resume_errored=True)
    import optuna

    sampler = optuna.samplers.TPESampler(seed=s.seed)
    optuna_search = OptunaSearch(space=dict(sweep.space), metric=s.metric, mode=s.mode,
                                 sampler=sampler,
                                 points_to_evaluate=retry_points(list(prior)) or None)
    told = tell_searcher(optuna_search, sampler, dict(sweep.space), list(prior), s.mode)
    searcher = ConcurrencyLimiter(optuna_search, max_concurrent=concurrency)
    scheduler = make_scheduler(sweep)
    fill_rungs(scheduler, list(prior), s.mode)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=searcher,
                                    scheduler=scheduler,
                                    num_samples=s.num_samples - told),
        run_config=tune.RunConfig(name="tune", storage_path=str(directory), verbose=1,
                                  callbacks=[CloseStoppedTrialRuns(uri, parent_run_id)]))


def run_sweep(sweep: Sweep, *, resume: bool = False, confirm: int = 0, ablate: bool = False,
              log: Callable[[str], None] = print,
              on_confirmed: Callable[[], None] | None = None) -> SweepOutcome:
    """Run (or with `resume`, continue) the sweep; then summarise it in its parent run and,
    with `confirm` = N, re-run the best config and its comparators with N seeds each, and
    with `ablate`, the sweep file's ablations of the best config, scored on val only
    (`on_confirmed` is called after each such run trained: hours apart on CPUs)."""
    from htl_ray import tracking
    from htl_ray.cluster import cpus_needed, join_cluster
    from htl_ray.train.preflight import preflight

    directory = sweep.directory
    state_path = directory / STATE_FILE
    if state_path.is_file() and not resume:
        raise ConfigError(f"sweep.name: {directory} already holds a sweep; continue it with "
                          "--resume or choose another sweep.name")
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep to resume at {directory} ({STATE_FILE} missing)")
    preflight(sweep.base)
    state = read_sweep_state(state_path) if resume else {}
    uri = state.get("tracking_uri") or tracking.resolve_tracking_uri(sweep.base.tracking.uri)
    join_cluster(sweep.base, uri, log)   # may refuse the sweep: before a parent run exists
    if resume:
        parent_run_id = state["parent_run_id"]
        tracking.set_tags(uri, parent_run_id, {RESUMED_AT_TAG: time.strftime("%FT%T")})
        from htl_ray.tracking import client as tracking_client

        tracking_client(uri).update_run(parent_run_id, status="RUNNING")
        log(f"[htl-ray] resuming sweep {directory} (MLflow parent run {parent_run_id})")
    else:
        parent_run_id = tracking.start_run(
            uri, sweep.base.tracking.experiment, f"sweep {sweep.settings.name}",
            _parent_params(sweep), {ROLE_TAG: "sweep", SWEEP_TAG: sweep.settings.name,
                                    GIT_COMMIT_TAG: tracking.git_commit()})
        directory.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps({"parent_run_id": parent_run_id, "tracking_uri": uri,
                                          "sweep_file": str(sweep.path.resolve()),
                                          STOPS_CLOSED_STATE_KEY: True}, indent=2))
    base_raw = _absolute(sweep.base, uri, directory / "runs")
    try:
        import ray

        concurrency = max_concurrent(sweep, ray.cluster_resources().get("CPU", 1.0))
        s = sweep.settings
        log(f"[htl-ray] sweep {s.name}: {s.num_samples} trials, {len(sweep.space)} parameters "
            f"({', '.join(sweep.space)}), Optuna TPE seed {s.seed}, {concurrency} at a time "
            f"({cpus_needed(sweep.base)} CPUs each), scheduler {s.scheduler}; "
            f"MLflow {tracking.redact(uri)} parent run {parent_run_id}")
        if resume and state.get(ARCHIVED_STATE_KEY) and not (directory / "tune").is_dir() \
                and _has_best(uri, parent_run_id):
            # swept on another machine (htl_ray.archive): its trials are results, not state
            best = archived_best(sweep, uri, parent_run_id)
            log(f"[htl-ray] sweep {s.name} was run elsewhere (archive "
                f"{state[ARCHIVED_STATE_KEY]}); best trial {best.name}: its confirmation runs")
            outcome = SweepOutcome(directory, parent_run_id, uri, best, [])
        else:
            outcome = _search(sweep, base_raw, uri, parent_run_id, resume, concurrency,
                              bool(state.get(STOPS_CLOSED_STATE_KEY)), log)
            if outcome.interrupted:
                return outcome
        if confirm and outcome.best is not None:
            outcome.confirm_run_ids = run_confirmation(sweep, outcome.best, confirm, base_raw,
                                                       parent_run_id, directory / "runs", log,
                                                       on_confirmed)
        if ablate and outcome.best is not None:
            from htl_ray.tune.ablation import run_ablations

            outcome.ablation_run_ids = run_ablations(sweep, outcome.best, base_raw,
                                                     parent_run_id, directory / "runs", log,
                                                     on_confirmed)
    except BaseException:
        tracking.end_run(uri, parent_run_id, "FAILED")
        raise
    tracking.end_run(uri, parent_run_id, "FINISHED")
    return outcome


def was_interrupted(records: list[TrialRecord], num_samples: int, scheduler: str,
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


def _search(sweep: Sweep, base_raw: dict[str, Any], uri: str, parent_run_id: str,
            resume: bool, concurrency: int, stops_closed: bool,
            log: Callable[[str], None]) -> SweepOutcome:
    """The Tune search and its summary; an interrupted search ends its parent run KILLED."""
    from htl_ray import tracking
    from htl_ray.tune.trial_runs import close_open_trial_runs, open_trial_ids

    s, directory = sweep.settings, sweep.directory
    restore = resume and (directory / "tune").is_dir()
    # a sweep whose Tune state predates the callback restores without it (Tune keeps the
    # RunConfig it saved): there, a stopped trial's run is still open after the search
    stops_closed = stops_closed or not restore
    # trials that ended on another machine (imported from the protocol archive): a new search
    # is told them and asks only for the rest; a restored one counts those it was told when it
    # was created (ones imported since are not part of its search)
    prior = archived_trials(sweep, uri, parent_run_id) if resume else []
    state_path = directory / STATE_FILE
    if restore:
        told, ignored = told_and_not(prior, read_sweep_state(state_path))
        retried: list[TrialRecord] = []
        if ignored:
            log(f"[htl-ray] sweep {s.name}: {len(ignored)} archived trial(s) imported after "
                "this machine's search began are not part of it (not counted)")
    else:
        # a new search runs the trials that failed elsewhere again (as --resume does here)
        told = [r for r in prior if not r.error]
        retried = [r for r in prior if r.error]
    remaining = s.num_samples - len(told)
    if resume and not restore:
        # a new search (its stopped trials' runs closed as they stop), told these trials
        _remember(state_path, {STOPS_CLOSED_STATE_KEY: True,
                               TOLD_STATE_KEY: [r.trial_id for r in told]})
        mark_retried(uri, retried)
        if prior:
            log(f"[htl-ray] sweep {s.name}: {len(prior)} trial(s) ended elsewhere (archive), "
                f"{max(remaining, 0)} still to run; the search continues from all of them")
        if retried:
            log(f"[htl-ray] sweep {s.name}: {len(retried)} of them failed there and run again "
                "first, with the same values (their archived runs: htl.retried)")
    if remaining > 0 or restore:
        results = _tuner(sweep, directory, base_raw, uri, parent_run_id, resume, concurrency,
                         prior).fit()
        records = _records(results, sweep)
    else:
        records = []
    ended = sum(r.finished or bool(r.error) for r in records)
    interrupted = was_interrupted(records, remaining, s.scheduler, stops_closed,
                                  open_trial_ids(uri, parent_run_id))
    closed = close_open_trial_runs(uri, parent_run_id, interrupted,
                                   {r.trial_id for r in records})
    records = told + records
    stopped = sum(not r.finished and not r.error for r in records) if not interrupted else 0
    if stopped:
        log(f"[htl-ray] {stopped} trial(s) stopped early by the scheduler (MLflow: KILLED)")
    if closed.get(INTERRUPTED_TAG):
        log(f"[htl-ray] {closed[INTERRUPTED_TAG]} trial run(s) cut short (MLflow: KILLED, "
            f"{INTERRUPTED_TAG})")
    best, plots = summarise(sweep, records, directory / "summary", uri, parent_run_id, log,
                            final=not interrupted)
    outcome = SweepOutcome(directory, parent_run_id, uri, best, records, plots)
    if interrupted:
        outcome.interrupted = True
        tracking.set_tags(uri, parent_run_id, {INTERRUPTED_TAG: "true"})
        tracking.end_run(uri, parent_run_id, "KILLED")
        log(f"[htl-ray] sweep interrupted after {ended + len(told)} of {s.num_samples} trials; "
            f"continue it with: htl-ray tune {sweep.path} --resume")
    return outcome


def archived_best(sweep: Sweep, uri: str, parent_run_id: str) -> TrialRecord:
    """The best trial as its sweep's parent run recorded it (as the search space's types)."""
    from htl_ray.tracking import client as tracking_client

    run = tracking_client(uri).get_run(parent_run_id)
    params = typed_params(sweep, best_params(run.data.params))
    if not params:
        raise ConfigError(f"MLflow run {parent_run_id}: the sweep's parent run records no best "
                          "configuration (best.* params); was the sweep finished?")
    tags = run.data.tags
    return TrialRecord(tags.get(BEST_TRIAL_ID_TAG, "?"), tags.get(BEST_TRIAL_TAG, "?"),
                       params, [], True)


def told_and_not(prior: list[TrialRecord], state: dict[str, Any]
                 ) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """For a restored search: the archived trials it was told when it was created (they count
    among its trials) and those imported since (they do not: it would draw their budget again)."""
    told = set(state.get(TOLD_STATE_KEY, []))
    return ([r for r in prior if r.trial_id in told],
            [r for r in prior if r.trial_id not in told])


def best_params(params: dict[str, str]) -> dict[str, str]:
    """The configuration a sweep's parent run records as chosen (`summarise`, once every trial
    has ended), keyed without the prefix; empty while the sweep is unfinished."""
    return {k.removeprefix(BEST_PREFIX): v for k, v in params.items()
            if k.startswith(BEST_PREFIX)}


def _has_best(uri: str, parent_run_id: str) -> bool:
    from htl_ray.tracking import client as tracking_client

    return bool(best_params(tracking_client(uri).get_run(parent_run_id).data.params))


def read_sweep_state(state_path: Path) -> dict[str, Any]:
    """sweep_state.json (parent run, tracking URI, what was told to Optuna), or one error
    naming it when it was cut short."""
    try:
        state = json.loads(state_path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{state_path}: not readable as JSON ({exc}); restore it from a copy "
                          "of the sweep directory") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{state_path}: not a sweep state (expected a JSON object)")
    return state


def _remember(state_path: Path, entries: dict[str, Any]) -> None:
    """Add entries to sweep_state.json, atomically (the archive thread reads it meanwhile)."""
    state = read_sweep_state(state_path)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps({**state, **entries}, indent=2))
    os.replace(tmp, state_path)


def summarise(sweep: Sweep, records: list[TrialRecord], out_dir: Path, uri: str,
              parent_run_id: str, log: Callable[[str], None], final: bool = True
              ) -> tuple[TrialRecord | None, dict[str, Path]]:
    """Best config, study summary, trials table and Optuna plots → files and the parent run.
    The best config becomes the parent's `best.*` params only when `final`: MLflow params
    cannot change, and an interrupted sweep's best so far may not be its choice."""
    from htl_ray import tracking

    s = sweep.settings
    scored = [r for r in records if r.value(s.mode) is not None and not r.error]
    best = None
    if scored:
        pick = max if s.mode == "max" else min
        best = pick(scored, key=lambda r: r.value(s.mode))
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
        log(f"[htl-ray] best trial {best.name}: {s.metric} {best.value(s.mode):.4f}")
    log(f"[htl-ray] sweep summary: {out_dir / 'study_summary.md'}; plots in {out_dir / 'plots'}")
    return best, plots


def confirm_run_name(group: str, seed: int) -> str:
    """Run name (and run directory under the sweep's runs/) of one confirmation run."""
    return f"confirm-{group}-s{seed}"


def confirmation_plan(sweep: Sweep, best_params: dict[str, Any], seeds: int,
                      base_raw: dict[str, Any]) -> list[tuple[str, str, int, ExperimentConfig]]:
    """(run name, group, seed, config) of every confirmation run: the best config and the same
    config with each comparator's `htl.method` (default: erm only), seeds 0..N−1 — a placebo
    or another score gets exactly the attention settings the sweep chose for HTL.

    Order: the verdict reads the best config against ERM and the placebo, so those groups run
    first, seed-major (a protocol interrupted after k seeds holds k complete paired
    comparisons); the other scores (loss, el2n) follow, seed-major too: with 5 groups and 3
    seeds the verdict's 9 runs come before the 6 others, not among them."""
    # a comparator that is the best config's own method would be the best group again
    own = sweep.config_for(best_params, None, base_raw).htl.method
    groups = {"best": [], **{m: [f"htl.method={m}"] for m in sweep.settings.comparators
                             if m != own}}
    tiers = [[g for g in groups if g in VERDICT_GROUPS], [g for g in groups
                                                           if g not in VERDICT_GROUPS]]
    return [(confirm_run_name(group, seed), group, seed,
             sweep.config_for(best_params, groups[group] + [
                 f"run.seed={seed}", f"run.name={confirm_run_name(group, seed)}"], base_raw))
            for tier in tiers for seed in range(seeds) for group in tier]


def run_confirmation(sweep: Sweep, best: TrialRecord, seeds: int, base_raw: dict[str, Any],
                     parent_run_id: str, runs_dir: Path, log: Callable[[str], None],
                     on_confirmed: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train the `confirmation_plan` as child runs of the sweep. Runs already finished are
    kept; unfinished ones resume; `on_confirmed` is called after each run trained."""
    plan = confirmation_plan(sweep, best.params, seeds, base_raw)
    return train_child_runs(sweep, plan, "confirm", best, parent_run_id, runs_dir, log,
                            on_confirmed)


def train_child_runs(sweep: Sweep, plan: list[tuple[str, str, int, ExperimentConfig]],
                     role: str, best: TrialRecord, parent_run_id: str, runs_dir: Path,
                     log: Callable[[str], None],
                     on_trained: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train a plan of (run name, group, seed, config) as child runs of the sweep with the
    role `role` (confirm, ablation): a run finished here or elsewhere (imported from the
    archive) is kept, after checking it ran the config planned now; an unfinished one resumes
    from its checkpoint. Returns the MLflow run ids per group."""
    from htl_ray.train.trainer import RUN_STATE_FILE, evaluate_run, run_training

    out: dict[str, list[str]] = {}
    for name, group, seed, cfg in plan:
        state_file = runs_dir / name / RUN_STATE_FILE
        _same_config_or_refuse(state_file, cfg, role)
        finished = _finished_run(state_file)
        if not finished:
            # trained elsewhere and imported from the archive (scored, or not found) — also
            # when this machine had begun it and lost it: the finished one is kept
            finished = _finished_in_mlflow(sweep, group, seed, cfg, name, parent_run_id, role)
            if finished:
                log(f"[htl-ray] {role} {name}: finished elsewhere (MLflow run {finished})")
                out.setdefault(group, []).append(finished)
                continue
        if finished:
            log(f"[htl-ray] {role} {name}: already finished (MLflow run {finished})")
            if cfg.train.evaluate_test and not _has_test_metrics(state_file, finished):
                evaluate_run(state_file.parent, log=log)      # its test evaluation had failed
            out.setdefault(group, []).append(finished)
            continue
        log(f"[htl-ray] {role} {name}: {group} config, seed {seed}")
        outcome = run_training(cfg, resume=state_file.is_file(), log=log, tags={
            PARENT_TAG: parent_run_id, SWEEP_TAG: sweep.settings.name,
            ROLE_TAG: role, GROUP_TAG: group, TRIAL_TAG: best.trial_id,
            "mlflow.runName": f"{group} s{seed} ({best.name})"})
        out.setdefault(group, []).append(outcome.mlflow_run_id)
        if on_trained is not None:
            on_trained()
    return out


RUN_KIND = {"confirm": "confirmation", ABLATION_ROLE: "ablation"}
SCORED_ROLES = tuple(RUN_KIND)        # a sweep's child runs that count once scored


def scored_key(role: str) -> str:
    """The metric a finished child run of `role` must hold: confirmation runs are scored on
    test, ablation runs on val only."""
    return "best/val/dice" if role == ABLATION_ROLE else "best/test/dice"


# run identity, tracking, how fast the HTL scorer runs (and how long it may take to start), how
# often a lost worker is restarted:
# none of them changes what a run trains
IGNORED_ON_RESUME = ("run.", "tracking.", *RESULT_NEUTRAL_KEYS)


# where the data and an initial checkpoint lie on the machine that trained a run
MACHINE_PATHS = ("data.path", "model.init_checkpoint")


def _same_config_or_refuse(state_file: Path, cfg: ExperimentConfig,
                           role: str = "confirm") -> None:
    """A confirmation (or ablation) run already on disk must be the run planned now: if the
    sweep's best configuration changed (more trials, other settings), mixing its old seeds with
    new ones would compare two configurations under one name."""
    if not state_file.is_file():
        return
    from htl_ray.config import from_dict

    old = from_dict(read_run_state(state_file.parent)["config"]).flat()
    new = cfg.flat()
    differ = _differing(old, new, set(old) | set(new), IGNORED_ON_RESUME)
    if differ:
        raise ConfigError(
            f"{state_file.parent}: this {RUN_KIND[role]} run {_changed(differ)} Move the "
            f"sweep's runs/{role}-* directories away (or restore the settings) to train the "
            "new configuration")


def _differing(old: dict[str, Any], new: dict[str, Any], keys: set[str],
               ignored: tuple[str, ...]) -> list[str]:
    return sorted(k for k in keys if not k.startswith(ignored) and old.get(k) != new.get(k))


def _changed(differ: list[str]) -> str:
    listed = ", ".join(differ[:4]) + (", ..." if len(differ) > 4 else "")
    return (f"was trained with another configuration than the one planned now ({listed} "
            "differ): the sweep's best configuration or its settings changed.")


def _finished_in_mlflow(sweep: Sweep, group: str, seed: int, cfg: ExperimentConfig,
                       name: str, parent_run_id: str, role: str = "confirm") -> str | None:
    """A confirmation (or ablation) run FINISHED and scored (`scored_key`) in MLflow without a
    run directory here: trained on another machine and imported from the protocol archive. It
    must have run the configuration planned now (the params it recorded; keys newer than it
    are not compared)."""
    from htl_ray.data.schema import read_manifest
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    query = (f"attributes.status = 'FINISHED' and tags.`{SWEEP_TAG}` = '{sweep.settings.name}'"
             f" and tags.`{ROLE_TAG}` = '{role}' and tags.`{GROUP_TAG}` = '{group}'"
             f" and params.`run.seed` = '{seed}' and tags.`{PARENT_TAG}` = '{parent_run_id}'")
    runs = [r for r in client.search_runs([exp.experiment_id], query, max_results=100)
            if scored_key(role) in r.data.metrics]
    if not runs:
        return None
    old = runs[0].data.params
    new = {k: str(v) for k, v in cfg.flat().items()}
    differ = _differing(old, new, set(old) & set(new), IGNORED_ON_RESUME + MACHINE_PATHS)
    try:                                                   # the data, wherever it lies here
        here = read_manifest(cfg.data.path).get("fingerprint")
    except FileNotFoundError:
        here = None
    if here and runs[0].data.tags.get(DATASET_TAG) not in (None, here):
        differ.insert(0, "the dataset (htl.dataset_fingerprint)")
    if differ:
        raise ConfigError(
            f"MLflow run {runs[0].info.run_id} ({name}, finished elsewhere) {_changed(differ)} "
            "To train the new configuration, continue without the archive in a fresh MLflow "
            "store and sweep directory (tracking.uri, sweep.storage_path), or delete the "
            "imported runs (tag htl.archive.origin_run_id)")
    return runs[0].info.run_id


def _has_test_metrics(state_file: Path, run_id: str) -> bool:
    from htl_ray.tracking import client as tracking_client

    uri = read_run_state(state_file.parent)["tracking_uri"]
    return scored_key("confirm") in tracking_client(uri).get_run(run_id).data.metrics


def _finished_run(state_file: Path) -> str | None:
    if not state_file.is_file():
        return None
    from htl_ray import tracking

    state = read_run_state(state_file.parent)
    run_id = state.get("mlflow_run_id")
    if run_id and tracking.run_status(state["tracking_uri"], run_id) == "FINISHED":
        return run_id
    return None
