"""The confirmation runs: the sweep's chosen configuration and its comparators, over seeds.

Each is a child run of the sweep (`htl.role` = confirm, `htl.group` = its method group), scored
on test: the only runs that read the test split. The verdict compares the chosen configuration
with ERM and with the random placebo, paired by seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from htl_ray.tracking.schema import CONFIRM_ROLE
from htl_ray.tune.child_runs import PlannedRun, train_child_runs
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import TrialRecord

VERDICT_GROUPS = ("best", "erm", "random")   # the verdict: best vs ERM and the placebo


def confirm_run_name(group: str, seed: int) -> str:
    """Run name (and run directory under the sweep's runs/) of one confirmation run."""
    return f"{CONFIRM_ROLE}-{group}-s{seed}"


def planned_groups(sweep: Sweep, best_params: dict[str, Any], *,
                   base_raw: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """The confirmation groups of the chosen configuration (`best`, then each comparator) and
    their overrides; a comparator that makes the chosen configuration again (its own method)
    would be `best` twice and is left out — the protocol's status counts the same groups."""
    chosen = sweep.config_for(best_params, None, base_raw).flat()
    return {"best": [], **{g: extra for g, extra in sweep.comparator_groups.items()
                           if sweep.config_for(best_params, extra, base_raw).flat() != chosen}}


def confirmation_plan(sweep: Sweep, best_params: dict[str, Any], *, seeds: int,
                      base_raw: dict[str, Any]) -> list[PlannedRun]:
    """(run name, group, seed, config) of every confirmation run: the best config and the same
    config with each comparator's `htl.method` (default: erm only) or overrides, seeds
    0..N−1 — a placebo or another score gets exactly the attention settings the sweep chose for
    HTL, unless the comparator's overrides say otherwise.

    Order: the verdict reads the best config against ERM and the placebo, so those groups run
    first, seed-major (a protocol interrupted after k seeds holds k complete paired
    comparisons); the other scores (loss, el2n) follow, seed-major too: with 5 groups and 3
    seeds the verdict's 9 runs come before the 6 others, not among them."""
    groups = planned_groups(sweep, best_params, base_raw=base_raw)
    tiers = [[g for g in groups if g in VERDICT_GROUPS], [g for g in groups
                                                           if g not in VERDICT_GROUPS]]
    return [PlannedRun(confirm_run_name(group, seed), group, seed,
                       sweep.config_for(best_params, groups[group] + [
                           f"run.seed={seed}", f"run.name={confirm_run_name(group, seed)}"],
                           base_raw))
            for tier in tiers for seed in range(seeds) for group in tier]


def run_confirmation(sweep: Sweep, best: TrialRecord, *, seeds: int, base_raw: dict[str, Any],
                     parent_run_id: str, runs_dir: Path,
                     on_trained: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train the `confirmation_plan` as child runs of the sweep. Runs already finished are
    kept; unfinished ones resume; `on_trained` is called after each run trained."""
    plan = confirmation_plan(sweep, best.params, seeds=seeds, base_raw=base_raw)
    return train_child_runs(sweep, plan, role=CONFIRM_ROLE, best=best,
                            parent_run_id=parent_run_id, runs_dir=runs_dir,
                            on_trained=on_trained)
