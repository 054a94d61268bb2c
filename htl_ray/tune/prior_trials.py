"""Trials that ended on another machine, fed to the search that continues their sweep.

A sweep takes hours on CPUs, longer than one machine may last. Its ended trials travel in the
protocol archive (`htl_ray.archive`) as MLflow runs; Ray Tune's own state does not. On the next
machine the sweep continues with a new search that knows them as if it had run them itself:

- the Optuna sampler gets each one as a told trial, with the value Tune would have told it
  (a finished trial: its best epoch, as the trial reports; a trial the scheduler stopped: its
  last epoch), so TPE's next suggestions follow from all of them, and its seeded random state
  is advanced past them (it would otherwise draw their values again);
- ASHA's rungs get their per-epoch values, so a new trial is stopped against the same cutoffs;
- the search asks only for the trials still missing, and the sweep's summary and best
  configuration are chosen over all of them.

A trial that failed elsewhere runs again with the same values, first, as `--resume` retries a
failed trial on the machine it failed on (there from its checkpoint; here, without one, from
its first epoch). Its archived run is tagged `htl.retried` and no longer counts: the sweep's
trial is the new one.

A trial cut short by the interruption is not among them: its checkpoints stayed behind, and
a new trial takes its place.
"""

from __future__ import annotations

import json
import math
from typing import Any

from htl_ray.config import ConfigError
from htl_ray.tracking.outcome import TrialOutcome, trial_outcome
from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import (
    ORIGIN_TAG,
    RETRIED_TAG,
    ROLE_TAG,
    SAMPLED_TAG_PREFIX,
    TRIAL_ROLE,
    TRIAL_TAG,
)
from htl_ray.tune.space import MAX_SPARSITY, Sweep
from htl_ray.tune.study import TrialRecord

RUNG_KEY_PREFIX = "elsewhere:"     # an archived trial's entry in an ASHA rung


def typed_params(sweep: Sweep, params: dict[str, str]) -> dict[str, Any]:
    """MLflow params are text: read back as the search space's types (the values the trial
    ran with), for the space's keys only."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key, dist in sweep.space.items():
        if key not in params:
            continue
        text = params[key]
        if isinstance(dist, od.FloatDistribution):
            out[key] = float(text)
        elif isinstance(dist, od.IntDistribution):
            out[key] = int(text)
        elif isinstance(dist, od.CategoricalDistribution):
            out[key] = _choice(dist.choices, text)
        else:
            out[key] = text
    return out


def _choice(choices: tuple, text: str) -> Any:
    """The choice whose text `text` is; a list choice (JSON in the space) logged as a Python
    list by MLflow is matched through its value."""
    import ast

    found = next((c for c in choices if str(c) == text), None)
    if found is None:
        try:
            as_json = json.dumps(ast.literal_eval(text))
            found = next((c for c in choices if c == as_json), None)
        except (ValueError, SyntaxError, TypeError):
            pass
    return text if found is None else found


def sampled_params(sweep: Sweep, run) -> dict[str, Any]:
    """The values a trial run was sampled with: its `htl.sampled.*` tags (exact), else (runs
    trained before they existed) rebuilt from its config params — htl.max_sparsity is the top
    level of htl.sparsities (as rounded there, to 4 decimals). A key that cannot be recovered
    is a clear error: the continued search needs every value of every trial."""
    tags, params = run.data.tags, run.data.params
    out: dict[str, Any] = {}
    for key in sweep.space:
        if SAMPLED_TAG_PREFIX + key in tags:
            out[key] = json.loads(tags[SAMPLED_TAG_PREFIX + key])
        elif key == MAX_SPARSITY and "htl.sparsities" in params:
            out[key] = max(float(v) for v in json.loads(params["htl.sparsities"]))
        elif key in params:
            out.update(typed_params(sweep, {key: params[key]}))
        else:
            raise ConfigError(f"MLflow run {run.info.run_id} ({run.info.run_name}): no value "
                              f"of {key} (neither a {SAMPLED_TAG_PREFIX}{key} tag nor a param): "
                              "this trial cannot be told to the continued search")
    return out


def ended_elsewhere(run) -> bool:
    """An imported trial run that ended: finished, failed (and not yet run again), or stopped
    by the scheduler."""
    tags = run.data.tags
    if tags.get(ROLE_TAG) != TRIAL_ROLE or ORIGIN_TAG not in tags:
        return False
    return trial_outcome(run) in (TrialOutcome.FINISHED, TrialOutcome.FAILED,
                                  TrialOutcome.STOPPED_EARLY)


def archived_trials(sweep: Sweep, uri: str, parent_run_id: str,
                    known: set[str] = frozenset()) -> list[TrialRecord]:
    """The sweep's trials that ended elsewhere (imported runs under `parent_run_id`), except
    those whose Tune trial id is in `known` (Tune's own results of this machine)."""
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(uri)
    parent = client.get_run(parent_run_id)
    runs = search(client, parent.info.experiment_id,
                  RunQuery(parent_run_id=parent_run_id, role=TRIAL_ROLE))
    metric = sweep.settings.metric
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):   # the order they began
        trial_id = run.data.tags.get(TRIAL_TAG, run.info.run_id)
        if not ended_elsewhere(run) or trial_id in known:
            continue
        latest: dict[int, tuple[int, float]] = {}    # step → (timestamp, value): last logged
        for m in client.get_metric_history(run.info.run_id, metric):
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, m.value)
        history = [latest[s][1] for s in sorted(latest)]
        status = run.info.status
        out.append(TrialRecord(
            trial_id=trial_id, name=run.info.run_name or trial_id,
            params=sampled_params(sweep, run), history=history,
            finished=status == "FINISHED",
            error="FAILED (elsewhere)" if status == "FAILED" else None,
            mlflow_run_id=run.info.run_id))
    return out


def told_value(record: TrialRecord, mode: str) -> float | None:
    """What Tune told the searcher when the trial ended: its final result's metric — for a
    finished trial the metric at its best checkpoint, which is its best epoch when the sweep's
    metric and mode are the checkpoint's (val/dice, max: every shipped sweep)."""
    if record.error or not record.history:
        return None
    return record.value(mode) if record.finished else record.history[-1]


def tell_searcher(searcher, sampler, records: list[TrialRecord], *, space: dict[str, Any],
                  mode: str) -> int:
    """Add the records (in the order they started) to a new `OptunaSearch` as evaluated points,
    and advance its seeded `sampler` past them: replaying one ask per record draws what the
    original search drew for them, so the next suggestion is the one the uninterrupted sweep
    would have made (with the same seed the sampler would otherwise draw the archived trials'
    values again). A failed record advances the sampler too (the original search drew it) but
    is not told: it runs again (`retry_points`). Returns how many were told."""
    import optuna

    replay = optuna.create_study(sampler=sampler,
                                 direction="maximize" if mode == "max" else "minimize")
    told = 0
    for r in records:
        value = told_value(r, mode)
        state = (optuna.trial.TrialState.COMPLETE if value is not None
                 else optuna.trial.TrialState.FAIL)
        replay.tell(replay.ask(fixed_distributions=space), value, state=state)
        if r.error:
            continue
        searcher.add_evaluated_point(r.params, value if value is not None else 0.0,
                                     error=value is None)
        told += 1
    return told


def retry_points(records: list[TrialRecord]) -> list[dict[str, Any]]:
    """The values of the records that failed, for a new `OptunaSearch`'s `points_to_evaluate`:
    it suggests them first, without drawing from its sampler, so the draws after them are the
    ones the uninterrupted search would have made."""
    return [dict(r.params) for r in records if r.error]


def mark_retried(uri: str, records: list[TrialRecord]) -> None:
    """Tag the failed records' runs `htl.retried`: the search runs them again as new trials,
    so they no longer count, here or on a machine that imports them from the archive."""
    from htl_ray import tracking

    for r in records:
        if r.error and r.mlflow_run_id:
            tracking.set_tags(uri, r.mlflow_run_id, {RETRIED_TAG: "true"})


def fill_rungs(scheduler, records: list[TrialRecord], mode: str) -> int:
    """Record the trials' per-epoch values in a new ASHA scheduler's rungs (Tune's
    `training_iteration` t is the value after epoch t); returns how many entries. FIFO has no
    rungs: nothing to fill. A failed record fills none: it runs again and reaches them itself."""
    brackets = getattr(scheduler, "_brackets", None)
    if brackets is None:
        return 0
    sign = 1.0 if mode == "max" else -1.0
    filled = 0
    for bracket in brackets:
        for milestone, recorded in bracket._rungs:
            # ASHA records a trial at its first result with t >= milestone; a float
            # reduction_factor makes fractional milestones
            t = math.ceil(milestone)
            for r in records:
                if r.error or len(r.history) < t:
                    continue
                if r.history[t - 1] == r.history[t - 1]:                   # not NaN
                    recorded[RUNG_KEY_PREFIX + r.trial_id] = sign * r.history[t - 1]
                    filled += 1
    return filled
