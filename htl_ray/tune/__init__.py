"""Hyperparameter sweeps: Ray Tune trials of full training runs, Optuna search, MLflow nesting."""

from htl_ray.tune.space import Sweep, SweepSettings, load_sweep
from htl_ray.tune.sweep import SweepOutcome, run_sweep

__all__ = ["Sweep", "SweepOutcome", "SweepSettings", "load_sweep", "run_sweep"]
