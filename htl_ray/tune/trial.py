"""One Tune trial = one complete training run (the Ray Train V2 + Tune pattern).

The trial function builds the trial's config, then calls `run_training`, which builds and fits
a `TorchTrainer` with its own workers; a `TuneReportCallback` forwards each epoch's metrics to
Tune (for ASHA and for the search algorithm). The trial's run directory is named after its
Tune trial id, so a trial restarted by `--resume` finds its checkpoints and its MLflow run and
continues them instead of starting over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from htl_ray.tables import short_value
from htl_ray.tracking.schema import (
    PARENT_TAG,
    ROLE_TAG,
    SAMPLED_TAG_PREFIX,
    SWEEP_TAG,
    TRIAL_ROLE,
    TRIAL_TAG,
)

FINISHED_KEY = "htl_finished"     # in the trial's final result only (Tune's own `done` differs)


def trial_name(trial_id: str, params: dict[str, Any]) -> str:
    """`41a87fac lam=2.1 q=0.12 lr=0.003`: the Tune trial id and its sampled values."""
    parts = [f"{key.split('.')[-1]}={short_value(v, 3)}" for key, v in sorted(params.items())]
    return " ".join([trial_id, *parts])


def run_trial(params: dict[str, Any], *, base: dict[str, Any], sweep, runs_dir: str,
              parent_run_id: str, metric: str) -> dict[str, Any]:
    """The Tune function: train one configuration and return its best metric."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from htl_ray.console import show_progress
    from htl_ray.run_dir import RunDir
    from htl_ray.train.trainer import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_name(trial_id, params)
    # trials never look at the test split: only the confirmation runs report it
    cfg = sweep.config_for(params, [f"run.name=trial-{trial_id}",
                                    f"run.storage_path={runs_dir}",
                                    "train.evaluate_test=false"], base)
    resume = RunDir(Path(runs_dir) / cfg.run.name).has_state()
    tags = {PARENT_TAG: parent_run_id, SWEEP_TAG: sweep.settings.name, TRIAL_TAG: trial_id,
            ROLE_TAG: TRIAL_ROLE, "mlflow.runName": name,
            # the values as sampled (JSON): a derived one (htl.max_sparsity) is no config key
            **{SAMPLED_TAG_PREFIX + k: json.dumps(v) for k, v in params.items()}}
    show_progress(prefix=f"[{name}] ")        # this trial's lines, told apart from others'
    outcome = run_training(cfg, resume=resume, tags=tags, callbacks=[TuneReportCallback()],
                           log_model=False)
    best = outcome.best_metrics or outcome.metrics
    return {metric: best.get(metric, float("nan")), "mlflow_run_id": outcome.mlflow_run_id,
            "trial_name": name, FINISHED_KEY: 1}
