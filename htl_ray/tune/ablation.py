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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from htl_ray.config import ConfigError, ExperimentConfig
from htl_ray.tune.space import Sweep
from htl_ray.tune.study import TrialRecord
from htl_ray.tune.sweep import train_child_runs
from htl_ray.tune.trial import ABLATION_ROLE as ROLE


def ablation_run_name(name: str, seed: int) -> str:
    """Run name (and run directory under the sweep's runs/) of one ablation run."""
    return f"{ROLE}-{name}-s{seed}"


def ablation_plan(sweep: Sweep, best_params: dict[str, Any], base_raw: dict[str, Any]
                  ) -> list[tuple[str, str, int, ExperimentConfig]]:
    """(run name, variant, seed, config) of every ablation run, variant-major: each variant's
    seeds together, in the sweep file's order. A variant that leaves the chosen configuration
    as it is would train `confirm-best` again under another name, so it is refused."""
    chosen = sweep.config_for(best_params, None, base_raw).flat()
    plan = []
    for name, overrides in sweep.ablations.items():
        variant = sweep.config_for(best_params, overrides, base_raw)
        if variant.flat() == chosen:
            raise ConfigError(f"{sweep.path}: ablations.{name}: {', '.join(overrides)} is what "
                              "the sweep chose already: the variant would be the chosen "
                              "configuration again")
        for seed in range(sweep.settings.ablation_seeds):
            run_name = ablation_run_name(name, seed)
            plan.append((run_name, name, seed, sweep.config_for(best_params, [
                *overrides, "train.evaluate_test=false", f"run.seed={seed}",
                f"run.name={run_name}"], base_raw)))
    return plan


def run_ablations(sweep: Sweep, best: TrialRecord, base_raw: dict[str, Any],
                  parent_run_id: str, runs_dir: Path, log: Callable[[str], None],
                  on_trained: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Train the `ablation_plan` (finished runs kept, unfinished ones resumed)."""
    plan = ablation_plan(sweep, best.params, base_raw)
    if plan:
        log(f"[htl-ray] sweep {sweep.settings.name}: {len(sweep.ablations)} ablation(s) of "
            f"the chosen configuration ({', '.join(sweep.ablations)}), "
            f"{sweep.settings.ablation_seeds} seed(s) each, scored on val only")
    return train_child_runs(sweep, plan, ROLE, best, parent_run_id, runs_dir, log, on_trained)
