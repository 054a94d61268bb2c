"""What a sweep's child runs and its parent run must hold to count, by role.

A sweep's runs are told apart by their `htl.role` tag (`tracking.schema`): its parent run,
its trials, and after the search the confirmation runs (scored on test) and the ablation runs
(scored on val only). The archive, the protocol's status and the sweep itself read these rules
here, and find a sweep's runs that count (`scored_runs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import ABLATION_ROLE, CONFIRM_ROLE

if TYPE_CHECKING:
    from mlflow.entities import Run

RUN_KIND = {CONFIRM_ROLE: "confirmation", ABLATION_ROLE: "ablation"}
SCORED_ROLES = tuple(RUN_KIND)        # a sweep's child runs that count once scored

BEST_PREFIX = "best."   # the parent run's params of its chosen configuration (`summarise`)


def scored_key(role: str) -> str:
    """The metric a finished child run of `role` must hold: confirmation runs are scored on
    test, ablation runs on val only."""
    return "best/val/dice" if role == ABLATION_ROLE else "best/test/dice"


def scored_runs(uri: str, experiment: str, *, sweep: str, role: str, group: str, seed: int,
                parent_run_id: str | None = None) -> list[Run] | None:
    """The FINISHED child runs of `sweep` of one `role`, method group and seed that are scored
    (`scored_key`), as MLflow runs (under one parent run, when given); None when `experiment`
    is not in the store — a sweep's confirmation run finished elsewhere, or an earlier
    round's run to reuse, is found this one way."""
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = RunQuery(status="FINISHED", sweep=sweep, role=role, group=group,
                     parent_run_id=parent_run_id, params={"run.seed": seed})
    return [r for r in search(client, exp.experiment_id, query, max_results=100)
            if scored_key(role) in r.data.metrics]


def best_params(params: dict[str, str]) -> dict[str, str]:
    """The configuration a sweep's parent run records as chosen (`tune.summary.summarise`,
    once every trial has ended), keyed without the prefix; empty while the sweep is
    unfinished."""
    return {k.removeprefix(BEST_PREFIX): v for k, v in params.items()
            if k.startswith(BEST_PREFIX)}
