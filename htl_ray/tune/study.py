"""The sweep's Optuna study, rebuilt from Tune's results, and what the parent run shows of it.

Rebuilding the study from the trials Tune recorded (rather than reading the searcher's private
study) works the same after `--resume` and on any machine that has the sweep directory. A
trial stopped early by ASHA becomes a PRUNED Optuna trial with its per-epoch values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import optuna.distributions as od
import pandas as pd

from htl_ray.tables import markdown_table


@dataclass
class TrialRecord:
    """What one Tune trial produced, in the terms the study and the summary need."""

    trial_id: str
    name: str
    params: dict[str, Any]
    history: list[float]          # the metric after each epoch
    finished: bool                # ran to its last epoch (not stopped early, not failed)
    error: str | None = None
    mlflow_run_id: str | None = None

    def value(self, mode: str) -> float | None:
        vals = [v for v in self.history if v == v]
        if not vals:
            return None
        return max(vals) if mode == "max" else min(vals)


def build_study(records: list[TrialRecord], space: dict[str, od.BaseDistribution],
                mode: str, name: str) -> optuna.Study:
    study = optuna.create_study(study_name=name,
                                direction="maximize" if mode == "max" else "minimize")
    for r in sorted(records, key=lambda r: r.trial_id):
        params = {k: v for k, v in r.params.items() if k in space}
        if set(params) != set(space):
            continue
        dists = {k: space[k] for k in params}
        value = r.value(mode)
        steps = {i: v for i, v in enumerate(r.history) if v == v}
        if r.error or value is None:
            state, value = optuna.trial.TrialState.FAIL, None
        elif r.finished:
            state = optuna.trial.TrialState.COMPLETE
        else:
            state, value = optuna.trial.TrialState.PRUNED, None
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=value, state=state,
            intermediate_values=steps, user_attrs={"tune_trial_id": r.trial_id,
                                                   "name": r.name}))
    return study


PLOTS = {
    "parallel_coordinates": "plot_parallel_coordinate",
    "param_importances": "plot_param_importances",
    "optimization_history": "plot_optimization_history",
}


def write_plots(study: optuna.Study, out_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """PNG files of Optuna's matplotlib plots; plots that cannot be drawn (e.g. importances
    with one completed trial) are listed with the reason instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = {}, {}
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, fn)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(10, 6)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written[name] = path
        except Exception as exc:              # a plot is a view; the sweep result stands
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return written, skipped


def trials_table(records: list[TrialRecord], mode: str, metric: str) -> pd.DataFrame:
    rows = []
    for r in sorted(records, key=lambda r: r.trial_id):
        status = "error" if r.error else ("finished" if r.finished else "stopped early")
        rows.append({"trial": r.name, "status": status, metric: r.value(mode),
                     "epochs": len(r.history), **r.params, "mlflow_run_id": r.mlflow_run_id})
    df = pd.DataFrame(rows)
    if not df.empty:
        # failed trials last, whatever they logged before failing: the best is never one, so
        # the table must not list one above it
        df = (df.assign(_failed=df["status"] == "error")
              .sort_values(["_failed", metric], ascending=[True, mode == "min"],
                           na_position="last", kind="stable")
              .drop(columns="_failed"))
    return df


def summary_markdown(name: str, metric: str, mode: str, table: pd.DataFrame,
                     best: TrialRecord | None, skipped: dict[str, str]) -> str:
    lines = [f"# Sweep `{name}`", "", f"Objective: {mode} `{metric}` (best epoch of each trial).",
             f"Trials: {len(table)} ({(table['status'] == 'finished').sum()} finished, "
             f"{(table['status'] == 'stopped early').sum()} stopped early, "
             f"{(table['status'] == 'error').sum()} failed)." if len(table) else "Trials: 0.", ""]
    if best is not None:
        lines += [f"Best: **{best.name}** — {metric} = {best.value(mode):.4f}", ""]
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in sorted(best.params.items())]
        lines.append("")
    if len(table):
        lines += ["## All trials", "", markdown_table(table.drop(columns=["mlflow_run_id"]),
                                                       ".4g"), ""]
    for plot, why in skipped.items():
        lines.append(f"- plot `{plot}` not drawn: {why}")
    return "\n".join(lines) + "\n"
