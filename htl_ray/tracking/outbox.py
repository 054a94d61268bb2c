"""MLflow writes that survive a tracking outage: kept on disk first, sent when the server answers.

A long run must neither stop nor lose its metrics because the tracking server went away for a
while. Every write of a run (metrics, tags, artifacts, the end of the run) is appended to a
JSON-lines file in the run directory — one file per writing process: rank 0, the refresh
coordinator, the driver — and then sent. What cannot be sent stays in the file and goes out
with the next write once the server answers again, or with `htl-ray sync RUN_DIR` after the
run. Re-sending is harmless: a metric carries the timestamp of its first attempt, and MLflow
stores an identical (key, step, timestamp, value) once.

While the server is known to be down, a write costs one `/health` probe (seconds), not MLflow's
client back-off (minutes per call by default); `bound_client_retries` caps that back-off for
the first failing call (unless the user set MLflow's variables).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from htl_ray.errors import UserError
from htl_ray.run_dir import RunDir

logger = logging.getLogger(__name__)

# flushed in this order by the driver and by `htl-ray sync`: the run's end goes last
WRITERS = ("rank0", "coordinator", "driver")
_CLIENT_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                          "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_client_retries() -> None:
    """A dead server costs seconds per call, not MLflow's default minutes of back-off."""
    for key, value in _CLIENT_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _send_metrics(uri: str, run_id: str, entry: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    from htl_ray.tracking import client as tracking_client

    items = [Metric(k, float(v), entry["ts"], entry["step"]) for k, v in entry["values"].items()]
    for i in range(0, len(items), 500):
        tracking_client(uri).log_batch(run_id, metrics=items[i:i + 500])


def _send_tags(uri: str, run_id: str, entry: dict[str, Any]) -> None:
    from htl_ray import tracking

    tracking.set_tags(uri, run_id, entry["tags"])


def _send_artifact(uri: str, run_id: str, entry: dict[str, Any]) -> None:
    from htl_ray import tracking

    path = Path(entry["path"])
    if path.is_file():                          # a file removed since cannot be sent any more
        tracking.log_artifact(uri, run_id, path, entry.get("artifact_path"))
    elif path.is_dir():                         # a folder's files (an MLflow Model)
        tracking.log_artifacts(uri, run_id, path, entry.get("artifact_path"))


def _send_end(uri: str, run_id: str, entry: dict[str, Any]) -> None:
    from htl_ray.tracking import client as tracking_client

    tracking_client(uri).set_terminated(run_id, status=entry["status"], end_time=entry["ts"])


SENDERS: dict[str, Callable[[str, str, dict[str, Any]], None]] = {
    "metrics": _send_metrics, "tags": _send_tags, "artifact": _send_artifact, "end": _send_end}


def _reachable(uri: str) -> bool:
    from htl_ray.tracking import check_reachable

    try:
        check_reachable(uri, timeout_s=3.0)
    except UserError:
        return False
    return True


class TrackingOutbox:
    """The writes of one process to one MLflow run, kept in `RUN_DIR/mlflow_outbox/WRITER.jsonl`
    until they are sent. Only one process writes a given file at a time."""

    def __init__(self, run_dir: str | Path, uri: str, run_id: str, writer: str, *,
                 send_each: bool = True):
        """`send_each=False`: writes are only kept; `flush` (or `flush_run`) sends them."""
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {WRITERS}, got {writer!r}")
        self.path = RunDir(run_dir).outbox_dir / f"{writer}.jsonl"
        self.uri, self.run_id, self.writer = uri, run_id, writer
        self.send_each = send_each
        self.down_since: float | None = None
        bound_client_retries()

    # --- what a run writes
    def metrics(self, values: dict[str, float], step: int, ts: int | None = None) -> bool:
        """`ts` (ms): the same values sent again with the same timestamp are stored once."""
        values = {k: float(v) for k, v in values.items() if v is not None and v == v}
        return self._put({"kind": "metrics", "step": int(step), "values": values}, ts)

    def tags(self, tags: dict[str, Any]) -> bool:
        return self._put({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        return self._put({"kind": "artifact", "path": str(Path(path).resolve()),
                          "artifact_path": artifact_path})

    def end(self, status: str) -> bool:
        return self._put({"kind": "end", "status": status})

    # --- the file
    def pending(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:      # only the last line can be cut short (a crash)
                    raise UserError(f"{self.path}: line {i + 1} is not JSON") from None
        return out

    def _put(self, entry: dict[str, Any], ts: int | None = None) -> bool:
        entry["ts"] = int(time.time() * 1000) if ts is None else int(ts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return self.flush() if self.send_each else False

    def _keep(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(tmp, self.path)

    def flush(self) -> bool:
        """Send what is pending, oldest first; True when nothing is left."""
        entries = self.pending()
        if not entries:
            return True
        if self.down_since is not None and not _reachable(self.uri):
            return False
        sent = 0
        try:
            for entry in entries:
                SENDERS[entry["kind"]](self.uri, self.run_id, entry)
                sent += 1
        except Exception as exc:  # noqa: BLE001 - any tracking failure: keep and go on
            self._keep(entries[sent:])
            if self.down_since is None:
                from htl_ray.redact import redact

                self.down_since = time.time()
                logger.warning(f"[htl-ray] warning: MLflow {redact(self.uri)} is not answering "
                               f"({redact(str(exc))[:200]}); training goes on, and "
                               f"{len(entries) - sent} write(s) are kept in {self.path} and "
                               "sent when it answers again")
            return False
        self._keep([])
        if self.down_since is not None:
            logger.info(f"[htl-ray] MLflow answers again: sent the {sent} write(s) pending "
                        f"since {time.strftime('%H:%M:%S', time.localtime(self.down_since))}")
            self.down_since = None
        return True


def flush_run(run_dir: str | Path, uri: str, run_id: str) -> dict[str, int]:
    """Send every writer's pending writes of a run (rank 0, coordinator, then driver, whose
    last write ends the run); returns how many are still pending per writer."""
    left: dict[str, int] = {}
    boxes = [TrackingOutbox(run_dir, uri, run_id, writer) for writer in WRITERS]
    # a server that does not answer costs one short /health probe, not MLflow's retries
    down = any(box.pending() for box in boxes) and not _reachable(uri)
    for writer, box in zip(WRITERS, boxes, strict=True):
        if not left and not down:        # after one failure, do not wait on the others
            box.flush()
        if n := len(box.pending()):
            left[writer] = n
    return left
