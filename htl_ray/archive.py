"""The protocol archive: a sweep's finished runs as small JSON files that can be committed.

Hours of CPU training end up in one machine's MLflow store and sweep directories; a machine
replaced between sittings takes them along. The archive keeps what the results page is made of
— for the sweep's parent run, every trial that ended and every finished confirmation and
ablation run: the params, tags, metric histories, status and times (kilobytes per run) — plus
the sweep's HTL enrichment table. `import_sweep` re-creates those runs in another MLflow store
(tagged with their original run id, so importing twice adds nothing) and points the sweep
directory at the imported parent run; `htl-ray reproduce` then skips them as finished and
trains only what is missing: the trials a sweep still lacks (its search is told the archived
ones: `htl_ray.tune.prior_trials`), the confirmation runs and the ablations. Checkpoints stay
behind: an archived run is a result, not something to resume; a run cut short is trained
again.

Layout: `ARCHIVE/<sweep name>/<original run id>.json` and `ARCHIVE/<sweep name>/enrichment.csv`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import htl_ray.tune.state as sweep_state
from htl_ray.config import ConfigError
from htl_ray.tracking.outcome import is_settled, trial_outcome
from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import (
    ORIGIN_TAG,
    PARENT_TAG,
    RETRIED_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    TRIAL_ROLE,
)
from htl_ray.tune.roles import BEST_PREFIX, SCORED_ROLES, best_params, scored_key
from htl_ray.tune.space import Sweep
from htl_ray.tune.state import SweepState

logger = logging.getLogger(__name__)

FORMAT = 1
ENRICHMENT_FILE = "enrichment.csv"
_EXPORTING = threading.Lock()


@dataclass
class ArchiveCount:
    runs: int = 0          # runs written (export) or created (import)
    unchanged: int = 0     # already there and identical


def _experiment_runs(client, sweep: Sweep) -> list:
    exp = client.get_experiment_by_name(sweep.base.tracking.experiment)
    if exp is None:
        return []
    return search(client, exp.experiment_id, RunQuery(sweep=sweep.settings.name))


def _origin(run) -> str:
    return run.data.tags.get(ORIGIN_TAG, run.info.run_id)


def _archivable(run, sweep_final: bool) -> bool:
    """The sweep's parent (it stays RUNNING while its trials and confirmation runs train: the
    machine may be lost before it ends), trials that ended (finished, failed, or stopped by the
    scheduler; once the sweep has chosen its best configuration, also those an interruption
    cut short: then they are results, before that they are trained again) and confirmation
    runs finished and scored on test (ablation runs: on val)."""
    role, status = run.data.tags.get(ROLE_TAG), run.info.status
    if role in SCORED_ROLES:
        return status == "FINISHED" and scored_key(role) in run.data.metrics
    if role != TRIAL_ROLE:
        return role == SWEEP_ROLE
    return is_settled(trial_outcome(run), sweep_final=sweep_final)


def _status(run) -> str:
    """A parent archived while its protocol still runs is, elsewhere, an interrupted one."""
    return "KILLED" if run.info.status == "RUNNING" else run.info.status


def _version(run) -> list[Any]:
    """What tells an archived run from its newer state: a run scored on test after it ended
    (`htl-ray evaluate`) gains metrics without changing its status or end time; a sweep's
    parent gains its best configuration (best.* params) once its last trial ends; a trial that
    failed gains `htl.retried` when a continued search runs it again."""
    version = [_status(run), run.info.end_time, sorted(run.data.metrics)]
    best = sorted(BEST_PREFIX + k for k in best_params(run.data.params))
    if run.data.tags.get(RETRIED_TAG):
        version.append(RETRIED_TAG)
    return version + [best] if best else version


def _record(client, run, to_origin: dict[str, str]) -> dict[str, Any]:
    # (step, value, timestamp): a resumed run logs an epoch again; MLflow's latest value of a
    # step is the one logged last, so the timestamps must come along
    metrics = {key: sorted([m.step, m.value, m.timestamp] for m in client.get_metric_history(
        run.info.run_id, key)) for key in sorted(run.data.metrics)}
    tags = {k: to_origin.get(v, v) for k, v in sorted(run.data.tags.items())
            if k != ORIGIN_TAG}
    return {"format": FORMAT, "run_id": _origin(run), "run_name": run.info.run_name,
            "status": _status(run), "start_time": run.info.start_time,
            "end_time": run.info.end_time, "version": _version(run),
            "params": dict(sorted(run.data.params.items())), "tags": tags, "metrics": metrics}


def _dumps(record: dict[str, Any]) -> str:
    """Indented JSON with one line per metric history: diffs read per key, files stay small."""
    head = json.dumps({k: v for k, v in record.items() if k != "metrics"}, indent=1)
    metrics = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                         for k, v in record["metrics"].items())
    return head[:-2] + ',\n "metrics": {' + (f"\n{metrics}\n " if metrics else "") + "}\n}\n"


def _write_atomically(path: Path, text: str) -> None:
    """A machine lost mid-write must not leave half a file that stops every later export."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _archived_version(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None                     # unreadable: written again


def export_sweep(sweep: Sweep, uri: str, archive: Path) -> ArchiveCount:
    """Write the sweep's archivable runs under `archive/<sweep name>/`: also while its trials
    train, so that a sweep longer than one machine lasts continues elsewhere from the trials
    that ended (`htl_ray.tune.prior_trials`)."""
    with _EXPORTING:               # the protocol's background export and its own, one at a time
        return _export_sweep(sweep, uri, archive)


def _export_sweep(sweep: Sweep, uri: str, archive: Path) -> ArchiveCount:
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(uri)
    runs = _experiment_runs(client, sweep)
    held = sweep_state.read_in(sweep.directory)
    parent_id = held.parent_run_id if held is not None else None
    parent = next((r for r in runs if r.info.run_id == parent_id), None)
    count = ArchiveCount()
    if parent is None:
        return count
    # best.* params are logged once every trial has ended (`tune.summary.summarise(final=)`)
    final = bool(best_params(parent.data.params))
    # every local id, the imported parent's too, is written as the id it was first trained as
    to_origin = {r.info.run_id: _origin(r) for r in runs}
    runs = [r for r in runs if _archivable(r, final) and (
        r.info.run_id == parent_id or r.data.tags.get(PARENT_TAG) == parent_id)]
    out = archive / sweep.settings.name
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        path = out / f"{_origin(run)}.json"
        if _archived_version(path) == json.loads(json.dumps(_version(run))):
            count.unchanged += 1               # nothing new since: the committed file stays
            continue
        _write_atomically(path, _dumps(_record(client, run, to_origin)))
        count.runs += 1
    enrichment = sweep.directory / "report" / ENRICHMENT_FILE
    if enrichment.is_file():
        target = out / ENRICHMENT_FILE
        if not target.is_file() or target.read_bytes() != enrichment.read_bytes():
            shutil.copyfile(enrichment, target)
    if count.runs:
        logger.info(f"[htl-ray] archive: {count.runs} run(s) of {sweep.settings.name} written "
                    f"to {out}")
    return count


def read_records(archive: Path, sweep_name: str) -> list[dict[str, Any]]:
    """The archived runs of one sweep, checked: a file that is not one names itself."""
    records = []
    for path in sorted((archive / sweep_name).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable archived run ({exc})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}: expected an archived run (a JSON object), got "
                              f"{type(rec).__name__}")
        missing = {"run_id", "status", "params", "tags", "metrics"} - set(rec)
        if missing or rec.get("format") != FORMAT:
            raise ConfigError(f"{path}: not an archived run of format {FORMAT} (missing "
                              f"{sorted(missing) or 'nothing'}, format {rec.get('format')!r})")
        records.append(rec)
    return records


def import_sweep(sweep: Sweep, uri: str, archive: Path, *,
                 point_sweep: bool = True) -> ArchiveCount:
    """Re-create the archived runs of `sweep` that this MLflow store lacks, and (with
    `point_sweep`) make the sweep directory point at the archived parent run, so the protocol
    goes on to its missing trials and confirmation runs instead of sweeping again; a later
    round that only reads the runs (`tune.reuse`) leaves the sweep directory alone."""
    from htl_ray import tracking
    from htl_ray.tracking import client as tracking_client

    records = read_records(archive, sweep.settings.name)
    count = ArchiveCount()
    parents = [r for r in records if r["tags"].get(ROLE_TAG) == SWEEP_ROLE]
    if not parents:
        if records:
            raise ConfigError(f"{archive / sweep.settings.name}: {len(records)} archived runs "
                              "but not their sweep's parent run: without its best "
                              "configuration they cannot be continued")
        return count
    if len(parents) > 1:
        raise ConfigError(f"{archive / sweep.settings.name}: {len(parents)} sweep parent runs "
                          "archived; expected one")
    client = tracking_client(uri)
    exp_id = tracking.get_or_create_experiment(client, sweep.base.tracking.experiment, uri)
    local = {}
    for run in _experiment_runs(client, sweep):
        local[run.info.run_id] = run.info.run_id
        local[_origin(run)] = run.info.run_id
    records.sort(key=lambda r: r["tags"].get(ROLE_TAG) != SWEEP_ROLE)    # the parent first
    for rec in records:
        if rec["run_id"] in local:
            if rec["tags"].get(RETRIED_TAG):     # run again elsewhere since this store had it
                client.set_tag(local[rec["run_id"]], RETRIED_TAG, rec["tags"][RETRIED_TAG])
            count.unchanged += 1
            continue
        tags = {k: local.get(v, v) for k, v in rec["tags"].items()}
        run_id = create_run(client, exp_id, rec, tags=tags,
                            last_tags={ORIGIN_TAG: rec["run_id"]},
                            where=archive / sweep.settings.name / f"{rec['run_id']}.json")
        local[rec["run_id"]] = run_id
        count.runs += 1
    if count.runs:
        logger.info(f"[htl-ray] archive: {count.runs} run(s) of {sweep.settings.name} "
                    f"imported from {archive / sweep.settings.name} into MLflow "
                    f"{tracking.redact(uri)}")
    if not point_sweep:
        return count
    _point_sweep_at(sweep, uri, local[parents[0]["run_id"]], archive)
    enrichment = archive / sweep.settings.name / ENRICHMENT_FILE
    target = sweep.directory / "report" / ENRICHMENT_FILE
    if enrichment.is_file() and not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(enrichment, target)
    return count


def create_run(client, exp_id: str, rec: dict[str, Any], *, tags: dict[str, str],
               last_tags: dict[str, str], where: Path | str) -> str:
    """A run re-created in `exp_id` from an archive record (`_record`): its params, metric
    histories with their timestamps, status and times, with `tags`; `last_tags` are set last, so
    a run carries them only once it is whole (half a run is deleted)."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = rec.get("end_time") or rec.get("start_time") or 0
    try:
        params = [Param(k, str(v)) for k, v in rec["params"].items()]
        metrics = [Metric(k, float(point[1]), int(point[2]) if len(point) > 2 else stamp,
                          int(point[0]))
                   for k, history in rec["metrics"].items() for point in history]
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{where}: params or metrics not as archived ({exc})") from None
    run_id = client.create_run(exp_id, start_time=rec.get("start_time"), tags=tags,
                               run_name=rec.get("run_name")).info.run_id
    try:
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in last_tags.items()])
        if rec.get("end_time") is None:       # a parent archived while it ran: no end
            client.update_run(run_id, status=rec["status"])   # (set_terminated: now)
        else:
            client.set_terminated(run_id, status=rec["status"], end_time=rec["end_time"])
    except BaseException:
        client.delete_run(run_id)         # half a run must not pass for a whole one
        raise
    return run_id


def run_record(client, run) -> dict[str, Any]:
    """One run as the archive writes it (params, tags, metric histories, status, times)."""
    return _record(client, run, {})


def _point_sweep_at(sweep: Sweep, uri: str, parent_run_id: str, archive: Path) -> None:
    held = sweep_state.read_in(sweep.directory)
    if held is not None:
        if held.parent_run_id != parent_run_id:
            raise ConfigError(
                f"{sweep.directory} holds another sweep (MLflow parent run "
                f"{held.parent_run_id}) than the "
                f"archive {archive / sweep.settings.name} (parent run {parent_run_id}): move "
                "the sweep directory away to continue the archived protocol, or the archive "
                "away to keep this sweep")
        return
    sweep_state.write(sweep_state.path_in(sweep.directory), SweepState(
        parent_run_id, tracking_uri=uri, sweep_file=str(sweep.path.resolve()),
        from_archive=str(archive)))


class PeriodicExport:
    """Exports the sweeps every `interval_s` seconds in a background thread while the protocol
    trains (`with PeriodicExport(...):`): a trial that ended reaches the archive minutes later,
    not after its whole sweep. A failed export is logged and tried again; it never stops the
    training."""

    def __init__(self, sweeps: list[Sweep], uri: str, archive: Path,
                 interval_s: float = 120.0) -> None:
        self.sweeps, self.uri, self.archive = sweeps, uri, archive
        self.interval_s = interval_s
        self.exports = 0                   # completed passes over all sweeps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="htl-archive", daemon=True)
        self._last_error = ""

    def export_once(self) -> None:
        try:
            for sweep in self.sweeps:
                export_sweep(sweep, self.uri, self.archive)
            self.exports += 1
            self._last_error = ""
        except Exception as exc:  # noqa: BLE001 - the runs matter more than their copy
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:     # once, not every interval
                logger.warning(f"[htl-ray] archive: export failed (tried again in "
                               f"{self.interval_s:.0f} s): {message}")
            self._last_error = message

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export_once()

    def __enter__(self) -> PeriodicExport:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
