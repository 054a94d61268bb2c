"""How a sweep's trial run ended, read from its MLflow status and tags: the one reading that
the archive, a continued search (prior trials) and the protocol's status share.

Each of them then asks its own question of the outcome, for its own reason:
- the archive keeps a trial whose record will not change (`is_settled`);
- a continued search tells Optuna about a trial that ended on another machine
  (`ended_elsewhere` in tune.prior_trials: finished, failed, or stopped early);
- the protocol counts a trial towards the sweep's samples (`counts_as_done`).
"""

from __future__ import annotations

from enum import StrEnum

from htl_ray.tracking.schema import ORPHANED_TAG, RETRIED_TAG, STOPPED_EARLY_TAG


class TrialOutcome(StrEnum):
    RUNNING = "running"              # open: training, or its driver died before closing it
    FINISHED = "finished"
    FAILED = "failed"                # an error; a resumed search (or another machine) retries it
    RETRIED = "retried"              # failed, and a continued search ran it again
    STOPPED_EARLY = "stopped_early"  # KILLED by the scheduler (ASHA): a result
    INTERRUPTED = "interrupted"      # KILLED by Ctrl-C or a lost driver: trained again unless
                                     # the sweep had already chosen its configuration
    ORPHANED = "orphaned"            # KILLED: Tune ran its suggestion again as a new trial


def trial_outcome(run) -> TrialOutcome:
    """The outcome of an MLflow trial run (anything with `.info.status` and `.data.tags`)."""
    status, tags = run.info.status, run.data.tags
    if status == "RUNNING" or status == "SCHEDULED":
        return TrialOutcome.RUNNING
    if status == "FINISHED":
        return TrialOutcome.FINISHED
    if status == "FAILED":
        return TrialOutcome.RETRIED if tags.get(RETRIED_TAG) else TrialOutcome.FAILED
    if tags.get(ORPHANED_TAG):
        return TrialOutcome.ORPHANED
    if tags.get(STOPPED_EARLY_TAG):
        return TrialOutcome.STOPPED_EARLY
    return TrialOutcome.INTERRUPTED


def is_settled(outcome: TrialOutcome, *, sweep_final: bool) -> bool:
    """The trial's record will not change: it ended, and will not be trained again. An
    interrupted (or orphaned) trial is trained again until the sweep has chosen its
    configuration; from then on it is a result too."""
    if outcome is TrialOutcome.RUNNING:
        return False
    if outcome in (TrialOutcome.INTERRUPTED, TrialOutcome.ORPHANED):
        return sweep_final
    return True


def counts_as_done(outcome: TrialOutcome, *, sweep_final: bool,
                   trained_every_epoch: bool) -> bool:
    """The trial counts towards the sweep's samples in the protocol's status: finished, stopped
    early, or interrupted once the sweep had chosen (or after its last epoch). A failed trial
    does not: a resumed search trains it again. An orphaned one does not: its suggestion is
    counted once, in the new trial."""
    if outcome in (TrialOutcome.FINISHED, TrialOutcome.STOPPED_EARLY):
        return True
    if outcome is TrialOutcome.INTERRUPTED:
        return sweep_final or trained_every_epoch
    return False
