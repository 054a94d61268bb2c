"""The sweep's Optuna study, rebuilt from trial records, its plots and its summary."""

from __future__ import annotations

import optuna
import optuna.distributions as od

from htl_ray.tune.study import TrialRecord, build_study, summary_markdown, trials_table, write_plots

SPACE = {"htl.lam": od.FloatDistribution(0.5, 4.0), "train.lr": od.FloatDistribution(1e-4, 1e-2,
                                                                                      log=True)}


def _records():
    return [
        TrialRecord("a", "a lam=1", {"htl.lam": 1.0, "train.lr": 1e-3}, [0.5, 0.6], True),
        TrialRecord("b", "b lam=3", {"htl.lam": 3.0, "train.lr": 3e-3}, [0.55, 0.7, 0.65], True),
        TrialRecord("c", "c lam=2", {"htl.lam": 2.0, "train.lr": 5e-3}, [0.4], False),
        TrialRecord("d", "d lam=.5", {"htl.lam": 0.5, "train.lr": 2e-4}, [], False, error="boom"),
        TrialRecord("e", "e lam=3.5", {"htl.lam": 3.5, "train.lr": 7e-3}, [0.3, 0.62], True),
    ]


def test_study_states_and_values_follow_the_trials():
    study = build_study(_records(), SPACE, "max", "s")
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    assert states == [S.COMPLETE, S.COMPLETE, S.PRUNED, S.FAIL, S.COMPLETE]
    assert [t.value for t in study.trials if t.state == S.COMPLETE] == [0.6, 0.7, 0.62]
    assert study.best_trial.params == {"htl.lam": 3.0, "train.lr": 3e-3}
    assert study.trials[2].intermediate_values == {0: 0.4}           # stopped early at epoch 1


def test_plots_and_summary(tmp_path):
    records = _records()
    study = build_study(records, SPACE, "max", "s")
    written, skipped = write_plots(study, tmp_path)
    assert set(written) == {"parallel_coordinates", "param_importances", "optimization_history"}
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    table = trials_table(records, "max", "val/dice")
    assert list(table["trial"])[:2] == ["b lam=3", "e lam=3.5"]       # best first
    assert list(table["status"]).count("stopped early") == 1
    md = summary_markdown("s", "val/dice", "max", table, records[1], skipped)
    assert "Best: **b lam=3** — val/dice = 0.7000" in md
    assert "5 (3 finished, 1 stopped early, 1 failed)" in md


def test_a_trial_that_failed_after_logging_a_high_value_is_listed_last():
    """It cannot be the best, so the summary's table must not show it above the best."""
    records = [*_records(),
               TrialRecord("f", "f lam=4", {"htl.lam": 4.0, "train.lr": 1e-3}, [0.95], False,
                           error="lost")]
    table = trials_table(records, "max", "val/dice")
    assert list(table["trial"])[0] == "b lam=3"
    assert list(table["status"])[-2:] == ["error", "error"]
    assert list(table["trial"])[-2] == "f lam=4"            # failed ones by value, too
    assert list(trials_table(records, "min", "val/dice")["status"])[-2:] == ["error", "error"]
