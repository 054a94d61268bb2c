"""Trials that ended on another machine, told to the search that continues their sweep: the
next suggestion is the one the uninterrupted search would have made, ASHA stops a new trial
against the archived trials' values, and only imported trials that ended count."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from htl_ray import tracking
from htl_ray.tune.prior_trials import (
    RUNG_KEY_PREFIX,
    archived_trials,
    fill_rungs,
    mark_retried,
    retry_points,
    tell_searcher,
    told_value,
    typed_params,
)
from htl_ray.tune.search import make_scheduler
from htl_ray.tune.space import load_sweep
from htl_ray.tune.study import TrialRecord

SPACE = {"htl.lam": optuna.distributions.FloatDistribution(0.5, 4.0),
         "htl.attention": optuna.distributions.CategoricalDistribution(["reweight",
                                                                        "oversample"])}


def _search(seed: int = 0, points: list[dict] | None = None
            ) -> tuple[OptunaSearch, optuna.samplers.BaseSampler]:
    sampler = optuna.samplers.TPESampler(seed=seed)
    return OptunaSearch(space=dict(SPACE), metric="val/dice", mode="max",
                        sampler=sampler, points_to_evaluate=points), sampler


def test_a_continued_search_suggests_what_the_uninterrupted_one_would_have():
    whole, _ = _search()
    drawn = [whole.suggest(f"t{i}") for i in range(3)]
    for i, value in enumerate((0.6, 0.4)):
        whole.on_trial_complete(f"t{i}", {"val/dice": value})
    # elsewhere: the first two trials ended (one finished, one stopped by ASHA at 0.4)
    records = [TrialRecord("t0", "t0", drawn[0], [0.5, 0.6, 0.55], True),
               TrialRecord("t1", "t1", drawn[1], [0.3, 0.4], False)]
    assert [told_value(r, "max") for r in records] == [0.6, 0.4]
    continued, sampler = _search()
    assert tell_searcher(continued, sampler, records, space=dict(SPACE), mode="max") == 2
    assert continued.suggest("n0") == drawn[2]
    assert continued.suggest("n0") not in drawn[:2]
    told = continued._ot_study.get_trials()
    assert [t.state.name for t in told[:2]] == ["COMPLETE", "COMPLETE"]
    assert [t.value for t in told[:2]] == [0.6, 0.4]
    # without the replay the seeded sampler draws the archived trials' values again
    plain, _ = _search()
    for r in records:
        plain.add_evaluated_point(r.params, told_value(r, "max"))
    assert plain.suggest("n0") == drawn[0]


def test_a_failed_trial_runs_again_first_and_the_search_then_goes_on_as_before():
    """As `--resume` retries a failed trial on its own machine, a continued search elsewhere
    suggests the failed trial's values first — without drawing from its seeded sampler, which
    is advanced past the failed trial so that the next new draw is the uninterrupted one's."""
    whole, _ = _search()
    drawn = [whole.suggest(f"t{i}") for i in range(3)]
    records = [TrialRecord("t0", "t0", drawn[0], [0.5, 0.6], True),
               TrialRecord("t1", "t1", drawn[1], [0.3], False, error="FAILED (elsewhere)")]
    assert told_value(records[1], "max") is None
    assert retry_points(records) == [drawn[1]]
    continued, sampler = _search(points=retry_points(records))
    assert tell_searcher(continued, sampler, records, space=dict(SPACE), mode="max") == 1
    assert continued.suggest("r0") == drawn[1]          # the failed trial, again
    assert continued.suggest("n0") == drawn[2]          # then what would have come next
    states = [t.state.name for t in continued._ot_study.get_trials()]
    assert states.count("COMPLETE") == 1 and "FAIL" not in states
    # without its retry point the failed trial's values would never run again
    no_retry, sampler = _search()
    tell_searcher(no_retry, sampler, records, space=dict(SPACE), mode="max")
    assert no_retry.suggest("n0") == drawn[2]


def _sweep(tmp_path, mode: str = "max", grace_period: int = 4, reduction_factor: float = 2):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": ["train.epochs=8"],
        "sweep": {"name": "p", "metric": "val/dice", "mode": mode, "scheduler": "asha",
                  "grace_period": grace_period, "reduction_factor": reduction_factor,
                  "storage_path": str(tmp_path / "sweeps")},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0},
                  "htl.attention": {"type": "categorical",
                                    "choices": ["reweight", "oversample"]},
                  "htl.warmup_epochs": {"type": "int", "low": 1, "high": 3}}}))
    return load_sweep(path)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_asha_stops_a_new_trial_against_the_archived_trials(tmp_path, mode):
    sweep = _sweep(tmp_path, mode)
    scheduler = make_scheduler(sweep)
    sign = 1.0 if mode == "max" else -1.0
    # at epoch 4 (the only rung) the archived trials had 0.8 and 0.6; a third stopped at 2
    records = [TrialRecord("a", "a", {}, [0.1, 0.2, 0.3, 0.8, 0.9], True),
               TrialRecord("b", "b", {}, [0.1, 0.2, 0.3, 0.6], False),
               TrialRecord("c", "c", {}, [0.1, 0.2], False),
               # failed after epoch 4: it runs again and reaches the rung itself
               TrialRecord("d", "d", {}, [0.1, 0.2, 0.3, 0.1, 0.1], False, error="FAILED")]
    assert fill_rungs(scheduler, records, mode) == 2
    bracket = scheduler._brackets[0]
    # cutoff: the rung's median, 0.7; below it is worse when maximizing, better when minimizing
    worse, better = (0.65, 0.75) if mode == "max" else (0.75, 0.65)
    assert bracket.on_result(SimpleNamespace(trial_id="w"), 4, sign * worse) \
        == TrialScheduler.STOP
    assert bracket.on_result(SimpleNamespace(trial_id="b"), 4, sign * better) \
        == TrialScheduler.CONTINUE
    # without the archived values the first trial to reach the rung always continues
    empty = make_scheduler(sweep)._brackets[0]
    assert empty.on_result(SimpleNamespace(trial_id="w"), 4, sign * worse) \
        == TrialScheduler.CONTINUE


def test_archived_values_fill_the_rungs_a_live_trial_would_have_reached(tmp_path):
    """A float reduction_factor gives fractional milestones (3, 4.5, 6.75): ASHA records a
    trial at its first epoch past each, and the archived history must land in the same
    places with the same values."""
    sweep = _sweep(tmp_path, grace_period=3, reduction_factor=1.5)
    history = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    filled = make_scheduler(sweep)
    assert fill_rungs(filled, [TrialRecord("a", "a", {}, history, True)], "max") == 3
    live = make_scheduler(sweep)
    for t, value in enumerate(history, start=1):
        live._brackets[0].on_result(SimpleNamespace(trial_id="a"), t, value)
    assert [(m, {k.removeprefix(RUNG_KEY_PREFIX): v for k, v in rec.items()})
            for m, rec in filled._brackets[0]._rungs] \
        == [(m, rec) for m, rec in live._brackets[0]._rungs]
    assert [next(iter(rec.values())) for _, rec in filled._brackets[0]._rungs] == \
        [0.7, 0.5, 0.3]


def test_only_imported_trials_that_ended_are_read_back_typed_and_in_order(tmp_path,
                                                                          tracking_uri):
    sweep = _sweep(tmp_path)
    client = MlflowClient(tracking_uri)
    parent = tracking.start_run(tracking_uri, "e", "sweep p", {}, {"htl.role": "sweep"})

    def trial(name, status, tags, history, params):
        run_id = tracking.start_run(tracking_uri, "e", name, params, {
            "htl.role": "trial", "mlflow.parentRunId": parent, "htl.trial_id": name, **tags})
        for step, value in enumerate(history):
            tracking.log_metrics(tracking_uri, run_id, {"val/dice": value}, step)
        client.set_terminated(run_id, status)
        return run_id

    imported = {"htl.archive.origin_run_id": "elsewhere"}
    params = {"htl.lam": "2.5", "htl.attention": "oversample", "htl.warmup_epochs": "2",
              "train.lr": "0.001"}
    trial("t-done", "FINISHED", imported, [0.5, 0.7], params)
    trial("t-stopped", "KILLED", {**imported, "htl.stopped_early": "true"}, [0.2], params)
    trial("t-failed", "FAILED", imported, [], params)
    trial("t-cut", "KILLED", {**imported, "htl.interrupted": "true"}, [0.4], params)
    trial("t-local", "FINISHED", {}, [0.9], params)          # trained here: Tune knows it
    trial("t-rerun", "FAILED", {**imported, "htl.retried": "true"}, [], params)  # ran again
    records = archived_trials(sweep, tracking_uri, parent)
    assert [r.trial_id for r in records] == ["t-done", "t-stopped", "t-failed"]
    done, stopped, failed = records
    assert done.params == {"htl.lam": 2.5, "htl.attention": "oversample",
                           "htl.warmup_epochs": 2}
    assert done.history == [0.5, 0.7] and done.finished and not done.error
    assert stopped.history == [0.2] and not stopped.finished and not stopped.error
    assert failed.error and told_value(failed, "max") is None
    # once a continued search runs it again, the failed run no longer counts
    mark_retried(tracking_uri, records)
    assert client.get_run(failed.mlflow_run_id).data.tags["htl.retried"] == "true"
    assert not client.get_run(done.mlflow_run_id).data.tags.get("htl.retried")
    assert [r.trial_id for r in archived_trials(sweep, tracking_uri, parent)] == \
        ["t-done", "t-stopped"]
    assert typed_params(sweep, {"htl.attention": "sideways"}) == {"htl.attention": "sideways"}


def test_sampled_values_come_from_their_tags_or_are_rebuilt_from_the_config(tmp_path,
                                                                             tracking_uri):
    """htl.max_sparsity is no config key (it becomes htl.sparsities) and a list choice is
    logged as a Python list: both are recovered, or the run is named."""
    from htl_ray.config import ConfigError
    from htl_ray.tune.prior_trials import sampled_params

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "sweep": {"name": "p", "storage_path": str(tmp_path / "sweeps")},
        "space": {"htl.max_sparsity": {"type": "float", "low": 0.5, "high": 0.9},
                  "model.decoder_channels": {"type": "categorical",
                                             "choices": [[16, 8, 8, 4, 4], [8, 8, 8, 4, 4]]},
                  "htl.lam": {"type": "float", "low": 0.5, "high": 4.0}}}))
    sweep = load_sweep(path)
    list_key = "model.decoder_channels"
    client = MlflowClient(tracking_uri)

    def run(params, tags):
        run_id = tracking.start_run(tracking_uri, "s", "t", params, tags)
        return client.get_run(run_id)

    exact = run({"htl.lam": "1.0"}, {"htl.sampled.htl.max_sparsity": "0.74110535",
                                     f"htl.sampled.{list_key}": '"[8, 8, 8, 4, 4]"',
                                     "htl.sampled.htl.lam": "2.4208472637456366"})
    assert sampled_params(sweep, exact) == {"htl.max_sparsity": 0.74110535,
                                            list_key: "[8, 8, 8, 4, 4]",
                                            "htl.lam": 2.4208472637456366}
    # logged by MLflow as Python lists: [0.247, ...] and [16, 8, 8, 4, 4]
    old = run({"htl.sparsities": [0.247, 0.4941, 0.7411], list_key: [16, 8, 8, 4, 4],
               "htl.lam": "2.42"}, {})
    assert sampled_params(sweep, old) == {"htl.max_sparsity": 0.7411,
                                          list_key: "[16, 8, 8, 4, 4]", "htl.lam": 2.42}
    with pytest.raises(ConfigError, match=r"no value of htl.lam"):
        sampled_params(sweep, run({"htl.sparsities": [0.5], list_key: [16, 8, 8, 4, 4]}, {}))
