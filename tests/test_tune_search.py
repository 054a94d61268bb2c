"""The search's own decisions, without Ray: when a search was interrupted rather than ended,
which archived trials a restored search counts, where ASHA stops trials. (The search itself
runs end to end in tests/test_tune_sweep.py.)"""

from __future__ import annotations

from sweep_files import write_sweep

from htl_ray.tune.search import make_scheduler, told_and_not, was_interrupted
from htl_ray.tune.space import load_sweep
from htl_ray.tune.state import SweepState
from htl_ray.tune.study import TrialRecord


def test_a_ctrl_c_during_the_last_asha_trial_is_an_interruption_not_the_end():
    """Under ASHA an unfinished trial is either stopped (its run closed as it stopped) or cut
    short by a Ctrl-C (its run still open): only the second leaves the sweep unfinished, so
    its best-so-far is not recorded as final and --resume trains the trial on."""

    def interrupted(records, num_samples, scheduler, stops_closed, open_ids) -> bool:
        return was_interrupted(records, num_samples=num_samples, scheduler=scheduler,
                               stops_closed=stops_closed, open_ids=open_ids)

    def rec(tid: str, finished: bool, error: str | None = None) -> TrialRecord:
        return TrialRecord(tid, tid, {}, [0.5], finished, error)

    done, stopped, last = rec("a", True), rec("b", False), rec("c", False)
    failed = rec("d", False, "boom")
    assert interrupted([done, stopped, last], 4, "asha", True, set())   # one never began
    assert interrupted([done, stopped, last], 3, "asha", True, {"c"})
    assert not interrupted([done, stopped, last], 3, "asha", True, set())
    assert not interrupted([done, failed, stopped], 3, "asha", True, {"d"})
    # Tune state saved before the callback existed: stops leave their runs open too
    assert not interrupted([done, stopped, last], 3, "asha", False, {"b", "c"})
    # a trial cut short before its first epoch: no scheduler could have stopped it
    fresh = TrialRecord("e", "e", {}, [], False)
    assert interrupted([done, stopped, fresh], 3, "asha", False, set())
    # FIFO stops nothing: any trial that neither finished nor failed was cut short
    assert interrupted([done, last], 2, "fifo", False, set())
    assert not interrupted([done, failed], 2, "fifo", True, set())


def test_a_restored_search_counts_only_the_archived_trials_it_was_told():
    a, b, c = (TrialRecord(t, t, {}, [0.5], True) for t in "abc")
    counted, ignored = told_and_not([a, b, c], SweepState("p", told_archived_trials=("a", "c")))
    assert [r.trial_id for r in counted] == ["a", "c"] and ignored == [b]
    # the machine that ran the sweep from the start was told none: imports are not its trials
    assert told_and_not([a], SweepState("p")) == ([], [a])


def test_asha_stops_weak_trials_at_its_rung_but_never_at_the_last_epoch(tmp_path):
    """A stop at a trial's last report would kill it before its run ends FINISHED with its
    best metrics; trials that reach the last epoch must return on their own."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    sweep = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                              {"name": "s", "scheduler": "asha", "grace_period": 2,
                               "reduction_factor": 2},
                              overrides=["train.epochs=6"]))
    scheduler = make_scheduler(sweep)
    scheduler.set_search_properties("val/dice", "max")
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    stopped: dict[str, int] = {}
    for it in range(1, 7):                       # epochs 1..6, trial t0 is the best
        for i, t in enumerate(trials):
            if t.trial_id in stopped:
                continue
            action = scheduler.on_trial_result(None, t, {"training_iteration": it,
                                                         "val/dice": 0.8 - 0.1 * i})
            if action == TrialScheduler.STOP:
                stopped[t.trial_id] = it
    assert stopped and max(stopped.values()) < 6 and "t0" not in stopped
