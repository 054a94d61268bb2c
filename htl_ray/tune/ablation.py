"""Ablation runs: the chosen HTL configuration with one thing changed, scored on val only.

A sweep searches some knobs (λ, q, the pruning range, the attention mode); others stay at
the sweep file's values (the refresh interval, hard or soft weights). When HTL does not beat
its baselines, a reader asks whether one of those would have changed that. A sweep file's
`ablations:` section names such variants (`refresh-every-1: [htl.refresh_every=1]`); each is
trained after the confirmation runs with the confirmation runs' seeds, as a child run of the
sweep (`htl.role` = ablation, `htl.group` = its name), and scored on **val only**
(`train.evaluate_test=false`): trying variants is tuning, and the test split is read only by
the confirmation runs. Its val Dice is paired by seed with the chosen configuration's
(`confirm-best-s<seed>`) and with ERM's, so seed-to-seed spread shared by both cancels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from htl_ray.tracking.schema import ABLATION_ROLE as ROLE
from htl_ray.tune.child_runs import PlannedRun, train_child_runs
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import TrialRecord

logger = logging.getLogger(__name__)


def ablation_run_name(name: str, seed: int) -> str:
    """Run name (and run directory under the sweep's runs/) of one ablation run."""
    return f"{ROLE}-{name}-s{seed}"


def variant_config(sweep: Sweep, name: str) -> dict[str, Any]:
    """The base config with one variant's overrides, flat: a variant's overrides are applied
    after the sampled values, so these are its values whatever the sweep chose."""
    return sweep.config_for({}, sweep.ablations[name]).flat()


def same_as_chosen(sweep: Sweep, best_params: dict[str, Any]) -> list[str]:
    """The variants that would train the chosen configuration again: they set a searched key
    to the value the search chose (a variant setting an unsearched key to the base config's
    value is refused when the sweep file is read)."""
    chosen = sweep.config_for(best_params).flat()
    return [name for name in sweep.ablations
            if sweep.config_for(best_params, sweep.ablations[name]).flat() == chosen]


def matches_variant(sweep: Sweep, name: str, params: dict[str, str]) -> bool:
    """Whether a run's logged params (MLflow text) hold the variant's values as the sweep file
    names it now: a run of an edited variant (same name, other values) is not one of its runs."""
    if name not in sweep.ablations:
        return False
    flat = variant_config(sweep, name)
    keys = {o.split("=", 1)[0].strip() for o in sweep.ablations[name]}
    return all(params.get(k) == str(flat[k]) for k in keys)


def ablation_plan(sweep: Sweep, best_params: dict[str, Any], base_raw: dict[str, Any]
                  ) -> list[PlannedRun]:
    """(run name, variant, seed, config) of every ablation run, variant-major: each variant's
    seeds together, in the sweep file's order. A variant that is the chosen configuration
    already (`same_as_chosen`) has nothing to train and is left out."""
    same = same_as_chosen(sweep, best_params)
    return [PlannedRun(ablation_run_name(name, seed), name, seed, sweep.config_for(
                best_params, [*overrides, "train.evaluate_test=false", f"run.seed={seed}",
                              f"run.name={ablation_run_name(name, seed)}"], base_raw))
            for name, overrides in sweep.ablations.items() if name not in same
            for seed in range(sweep.settings.ablation_seeds)]


def run_ablations(sweep: Sweep, best: TrialRecord, *, base_raw: dict[str, Any],
                  parent_run_id: str, runs_dir: Path,
                  on_trained: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train the `ablation_plan` (finished runs kept, unfinished ones resumed)."""
    plan = ablation_plan(sweep, best.params, base_raw)
    for name in same_as_chosen(sweep, best.params):
        logger.info(f"[htl-ray] ablation {name}: {', '.join(sweep.ablations[name])} is what "
                    "the sweep chose: nothing to train (the confirmation runs are this variant)")
    if plan:
        logger.info(f"[htl-ray] sweep {sweep.settings.name}: {len(sweep.ablations)} "
                    f"ablation(s) of the chosen configuration ({', '.join(sweep.ablations)}), "
                    f"{sweep.settings.ablation_seeds} seed(s) each, scored on val only")
    return train_child_runs(sweep, plan, role=ROLE, best=best, parent_run_id=parent_run_id,
                            runs_dir=runs_dir, on_trained=on_trained)
