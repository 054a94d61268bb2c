"""A later round counts an earlier round's confirmation runs where nothing differs.

A second round of the protocol (its own sweep names and archive, so the first stays as it is)
often re-runs some of the first round's groups with more seeds: ERM, the chosen HTL
configuration, the placebo. Their seeds 0–2 were trained already. A sweep file's `reuse:`
section (`htl_ray.tune.space.Reuse`) names the earlier sweep and which of its groups each of
this sweep's groups is; a planned confirmation run is then copied from the earlier sweep's run
of the same seed — a new MLflow run under this sweep's parent, with the earlier run's params,
metric histories and times, tagged with where it came from (`REUSED_TAG`) — but only when the
earlier run trained exactly the configuration planned now (`tune.same_config`), on the same
data. Otherwise it is trained, and the log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from htl_ray.tracking.schema import (
    CONFIRM_ROLE,
    DATASET_TAG,
    GROUP_TAG,
    PARENT_TAG,
    REUSED_SWEEP_TAG,
    REUSED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from htl_ray.tune.roles import scored_runs
from htl_ray.tune.same_config import mlflow_run_differences
from htl_ray.tune.space import Sweep

logger = logging.getLogger(__name__)


def import_reused(sweep: Sweep, uri: str) -> None:
    """Bring the earlier sweep's archived runs into this MLflow store (when its `reuse:` names
    an archive), so that they can be found."""
    from htl_ray.archive import import_sweep

    if sweep.reuse is None or sweep.reuse.archive is None:
        return
    # only read: the earlier round's sweep directory is left as it is
    import_sweep(sweep.reuse.source, uri, sweep.reuse.archive, point_sweep=False)


def reuse_run(sweep: Sweep, planned, *, parent_run_id: str, trial_id: str) -> str | None:
    """The MLflow run id of a copy, under `parent_run_id`, of the earlier sweep's run of
    `planned`'s group and seed; None when the group is not reused, the earlier run is not
    there, or it trained another configuration (logged)."""
    from htl_ray import tracking
    from htl_ray.archive import create_run, run_record
    from htl_ray.tracking import client as tracking_client

    if sweep.reuse is None or planned.group not in sweep.reuse.groups:
        return None
    source = sweep.reuse.source
    cfg = planned.config
    runs = scored_runs(cfg.tracking.uri, source.base.tracking.experiment,
                       sweep=source.settings.name, role=CONFIRM_ROLE,
                       group=sweep.reuse.groups[planned.group], seed=planned.seed)
    if runs is None:
        logger.info(f"[htl-ray] confirm {planned.name}: MLflow experiment "
                    f"{source.base.tracking.experiment!r} of {source.settings.name} is not in "
                    "this store (is its archive imported?); training it")
        return None
    source_group = f"{source.settings.name} group {sweep.reuse.groups[planned.group]!r}"
    if not runs:
        logger.info(f"[htl-ray] confirm {planned.name}: {source_group} has no finished seed "
                    f"{planned.seed} in MLflow (is its archive imported?); training it")
        return None
    # the first run that trained exactly this (another sweep of that name may have run another
    # configuration)
    reasons = [(r, _differs(r, cfg)) for r in runs]
    earlier = next((r for r, why in reasons if not why), None)
    if earlier is None:
        run, why = reasons[0]
        logger.info(f"[htl-ray] confirm {planned.name}: not reused from {source_group} run "
                    f"{run.info.run_name!r}: {why}; training it")
        return None
    where = f"{source.settings.name} run {earlier.info.run_name!r}"
    client = tracking_client(cfg.tracking.uri)
    rec = run_record(client, earlier)        # its origin is the run id it was trained as
    origin, name = rec["run_id"], f"{planned.group} s{planned.seed} (reused)"
    tags = {**rec["tags"], SWEEP_TAG: sweep.settings.name, PARENT_TAG: parent_run_id,
            GROUP_TAG: planned.group, TRIAL_TAG: trial_id, "mlflow.runName": name}
    rec = {**rec, "run_name": name}
    exp_id = tracking.get_or_create_experiment(client, cfg.tracking.experiment, cfg.tracking.uri)
    run_id = create_run(client, exp_id, rec, tags=tags,
                        last_tags={REUSED_TAG: origin,
                                   REUSED_SWEEP_TAG: source.settings.name},
                        where=Path(sweep.reuse.sweep_file))
    logger.info(f"[htl-ray] confirm {planned.name}: reused from {where} (same configuration "
                f"and seed; MLflow run {run_id})")
    return run_id


def _differs(run, cfg) -> str:
    """Why `run` did not train `cfg` ('' when it did): a config key both know, or data that
    is not shown to be the same — unlike a resume, a reuse needs both fingerprints, equal."""
    from htl_ray.data.schema import read_manifest

    differ = mlflow_run_differences(run, cfg)
    if differ:
        new = {k: str(v) for k, v in cfg.flat().items()}
        shown = ", ".join(f"{k} {run.data.params.get(k)!r} → {new[k]!r}" if k in new else k
                          for k in differ[:4])
        return f"its configuration differs ({shown}{', ...' if len(differ) > 4 else ''})"
    try:
        here = read_manifest(cfg.data.path).get("fingerprint")
    except (OSError, ValueError) as exc:
        return f"the data to compare it with is not readable here ({exc})"
    theirs = run.data.tags.get(DATASET_TAG)
    if not here or not theirs:
        return "a dataset fingerprint is missing (the run's or this data's)"
    return ""
