"""How a trial run ended, and what each reader makes of it, as tables (no Ray, no MLflow
server: the outcome is a function of a run's status and tags)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from htl_ray.tracking.outcome import TrialOutcome, counts_as_done, is_settled, trial_outcome
from htl_ray.tracking.schema import (
    ORIGIN_TAG,
    ORPHANED_TAG,
    RETRIED_TAG,
    ROLE_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_ROLE,
)

T = TrialOutcome


def _run(status: str, *tags: str, **extra: str):
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id="r"),
                           data=SimpleNamespace(tags={ROLE_TAG: TRIAL_ROLE,
                                                      **{t: "true" for t in tags}, **extra},
                                                metrics={}, params={}))


@pytest.mark.parametrize(("status", "tags", "outcome"), [
    ("RUNNING", (), T.RUNNING),
    ("SCHEDULED", (), T.RUNNING),
    ("FINISHED", (), T.FINISHED),
    ("FAILED", (), T.FAILED),
    ("FAILED", (RETRIED_TAG,), T.RETRIED),
    ("KILLED", (STOPPED_EARLY_TAG,), T.STOPPED_EARLY),
    ("KILLED", (), T.INTERRUPTED),
    ("KILLED", ("htl.interrupted",), T.INTERRUPTED),
    ("KILLED", (ORPHANED_TAG,), T.ORPHANED),
])
def test_a_trial_runs_status_and_tags_give_one_outcome(status, tags, outcome):
    assert trial_outcome(_run(status, *tags)) is outcome


SETTLED = {  # outcome → (before the sweep chose, after)
    T.RUNNING: (False, False), T.FINISHED: (True, True), T.FAILED: (True, True),
    T.RETRIED: (True, True), T.STOPPED_EARLY: (True, True),
    T.INTERRUPTED: (False, True), T.ORPHANED: (False, True),
}
COUNTS = {  # outcome → (before, before but every epoch trained, after the sweep chose)
    T.RUNNING: (False, False, False), T.FINISHED: (True, True, True),
    T.FAILED: (False, False, False), T.RETRIED: (False, False, False),
    T.STOPPED_EARLY: (True, True, True), T.INTERRUPTED: (False, True, True),
    T.ORPHANED: (False, False, False),
}


@pytest.mark.parametrize("outcome", list(T))
def test_what_the_archive_and_the_protocol_make_of_each_outcome(outcome):
    assert (is_settled(outcome, sweep_final=False),
            is_settled(outcome, sweep_final=True)) == SETTLED[outcome]
    assert (counts_as_done(outcome, sweep_final=False, trained_every_epoch=False),
            counts_as_done(outcome, sweep_final=False, trained_every_epoch=True),
            counts_as_done(outcome, sweep_final=True, trained_every_epoch=False)) \
        == COUNTS[outcome]


@pytest.mark.parametrize(("status", "tags", "archived_early", "told_elsewhere"), [
    ("RUNNING", (), False, False),
    ("FINISHED", (), True, True),
    ("FAILED", (), True, True),
    ("FAILED", (RETRIED_TAG,), True, False),
    ("KILLED", (STOPPED_EARLY_TAG,), True, True),
    ("KILLED", (), False, False),
    ("KILLED", (ORPHANED_TAG,), False, False),
])
def test_the_archive_and_a_continued_search_read_the_same_outcome(status, tags,
                                                                  archived_early,
                                                                  told_elsewhere):
    """The archive keeps a settled trial (before the sweep chose); a continued search tells
    Optuna about an imported trial that finished, failed or was stopped early."""
    from htl_ray.archive import _archivable
    from htl_ray.tune.prior_trials import ended_elsewhere

    assert _archivable(_run(status, *tags), sweep_final=False) is archived_early
    imported = _run(status, *tags, **{ORIGIN_TAG: "elsewhere"})
    assert ended_elsewhere(imported) is told_elsewhere
    assert ended_elsewhere(_run(status, *tags)) is False        # not imported: Tune knows it
