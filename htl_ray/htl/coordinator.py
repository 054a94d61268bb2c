"""The refresh coordinator: a Ray actor owned by one training run (docs/method.md, §One
training run).

Rank 0 hands it a snapshot every R epochs and goes on training; the coordinator scores the
training Dataset with the actor pool in a background thread, applies the EMA, turns scores into
weights, and publishes a numbered *version*. At each epoch start rank 0 asks for the newest
finished version and broadcasts its number, so every rank adopts the same one. Every version is
written to `RUN_DIR/htl/vNNNN.parquet` (and logged to MLflow) before it is published, so a
restarted coordinator — or a resumed run — finds every version again.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from htl_ray.htl.attention import METHODS, attention_weights, method_scores
from htl_ray.htl.scorer import ScoringSpec, score_dataset
from htl_ray.htl.scoring import ema
from htl_ray.run_dir import RunDir


def snapshot_path(run_dir: str | Path, version: int) -> Path:
    return RunDir(run_dir).snapshot_file(version)


def load_population(run_dir: str | Path, size: int) -> list[dict[str, Any]]:
    """The last `size` snapshots a coordinator kept (oldest first), so a restarted
    coordinator scores with the same PIE population as the one it replaces."""
    import torch

    paths = RunDir(run_dir).snapshot_files()[-size:] if size else []
    return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]


def version_path(run_dir: str | Path, version: int) -> Path:
    return RunDir(run_dir).htl_version_file(version)


def load_versions(run_dir: str | Path) -> dict[int, pd.DataFrame]:
    """Every published version's table, by version number."""
    return {v: pd.read_parquet(p) for v, p in RunDir(run_dir).htl_version_files().items()}


def weights_checksum(ids: np.ndarray, weights: np.ndarray) -> float:
    """Order-independent fingerprint of an id → weight map (equal maps, equal checksums)."""
    if len(ids) == 0:
        return 0.0
    order = np.argsort(np.asarray(ids, dtype=str))
    w = np.asarray(weights, dtype=np.float64)[order]
    return float(np.sum(w * (1.0 + np.arange(len(w)) / len(w))))


class RefreshCoordinator:
    """Use as `ray.remote(num_cpus=0, max_concurrency=8, max_restarts=-1,
    max_task_retries=-1)(RefreshCoordinator)` (`trainer.start_coordinator`): queries are
    answered while a refresh runs in its own thread. If the process dies, Ray restarts it and
    it comes back with every version persisted so far; a refresh that was still scoring is
    lost (`wait_for` then returns the latest persisted version) and the next one is computed
    as usual."""

    def __init__(self, run_dir: str, train_dataset: Any, spec: ScoringSpec, htl: dict[str, Any],
                 seed: int, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
                 delay_s: float = 0.0):
        from htl_ray.console import show_progress

        show_progress()              # the outbox's lines reach the driver's console
        self.run_dir = Path(run_dir)
        RunDir(self.run_dir).htl_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = train_dataset
        self.spec = spec
        self.htl = htl
        self.seed = seed
        self.delay_s = delay_s                      # test aid: makes a refresh take longer
        self.lock = threading.Lock()
        # one refresh scores at a time: concurrent ones split the scorer's CPUs between two
        # Ray Data executions (neither may get a whole actor: a refresh could hang), and the
        # EMA of h must see the versions in order
        self.scoring = threading.Lock()
        self.tables = load_versions(self.run_dir)   # a restarted coordinator resumes here
        self.population: deque = deque(maxlen=int(htl.get("population", 1)))
        if self.population.maxlen > 1:
            import ray

            for state in load_population(self.run_dir, self.population.maxlen):
                self.population.append(ray.put(state))
        self.threads: dict[int, threading.Thread] = {}
        self.errors: dict[int, str] = {}
        self.timeline: dict[int, dict[str, float]] = {}
        self.next_version = max(self.tables, default=0) + 1
        self.outbox = None
        if tracking_uri and mlflow_run_id:
            from htl_ray.tracking.outbox import TrackingOutbox

            # refreshes log from their own threads: one writer to the outbox file at a time
            self.outbox = TrackingOutbox(self.run_dir, tracking_uri, mlflow_run_id,
                                         "coordinator")
            self.outbox_lock = threading.Lock()

    # ------------------------------------------------------------------ queries
    def latest_version(self) -> int:
        with self.lock:
            return max(self.tables, default=0)

    def versions(self) -> list[int]:
        with self.lock:
            return sorted(self.tables)

    def weights(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        if version == 0:
            return np.array([], dtype=object), np.array([], dtype=np.float64)
        with self.lock:
            table = self.tables[version]
        return table["id"].to_numpy(), table["weight"].to_numpy()

    def table(self, version: int) -> pd.DataFrame:
        with self.lock:
            return self.tables[version].copy()

    def version_of_epoch(self, epoch: int) -> int | None:
        """The newest version scored from the snapshot taken after `epoch`, persisted or still
        scoring (a resumed run asks: was its refresh lost?)."""
        with self.lock:
            found = [v for v, t in self.tables.items()
                     if len(t) and int(t["epoch"].iloc[0]) == epoch]
        found += [v for v, t in self.timeline.items()
                  if int(t["epoch"]) == epoch and v not in self.errors]
        return max(found, default=None)

    def timing(self) -> dict[int, dict[str, float]]:
        return dict(self.timeline)

    def error(self) -> str | None:
        return next(iter(self.errors.values()), None)

    def drain(self, timeout_s: float = 3600.0) -> list[int]:
        """Wait for every submitted refresh, so each one is persisted before the run ends."""
        for thread in list(self.threads.values()):
            thread.join(timeout_s)
        return self.versions()

    def wait_for(self, version: int, timeout_s: float = 3600.0) -> int:
        thread = self.threads.get(version)
        if thread is not None:
            thread.join(timeout_s)
        if version in self.errors:
            raise RuntimeError(f"HTL refresh v{version} failed:\n{self.errors[version]}")
        return self.latest_version()

    # ------------------------------------------------------------------ refresh
    def submit(self, snapshot: list, epoch: int) -> int:
        """Start scoring `snapshot[0]` (an ObjectRef to a state dict) in the background."""
        import ray

        state = ray.get(snapshot[0])
        self.population.append(ray.put(state))       # the coordinator owns its population
        version = self.next_version
        self.next_version += 1
        if self.population.maxlen > 1:
            self._keep_snapshot(state, version)
        refs = list(self.population)
        self.timeline[version] = {"submitted": time.time(), "epoch": float(epoch)}
        t = threading.Thread(target=self._refresh, args=(version, refs, epoch), daemon=True)
        self.threads[version] = t
        t.start()
        return version

    def _keep_snapshot(self, state: dict[str, Any], version: int) -> None:
        """Persist the snapshot (PIE needs the last M after a restart); drop older ones."""
        import torch

        path = snapshot_path(self.run_dir, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.rename(path)
        for old in sorted(path.parent.glob("v*.pt"))[:-self.population.maxlen]:
            old.unlink()

    def _refresh(self, version: int, refs: list, epoch: int) -> None:
        try:
            with self.scoring:               # released once this version is published
                t0 = time.time()
                self.timeline[version]["started"] = t0
                if self.delay_s:
                    time.sleep(self.delay_s)
                raw = score_dataset(self.dataset, refs, self.spec)
                table = self._finish(raw, version, epoch)
                path = version_path(self.run_dir, version)
                tmp = path.with_suffix(".tmp")
                table.to_parquet(tmp, index=False)
                tmp.rename(path)                       # persisted before it is published
                wall = time.time() - t0
                with self.lock:
                    self.tables[version] = table
                self.timeline[version]["finished"] = time.time()
            metrics = self._metrics(table, version, wall)
            metrics.update({f"htl/measured_sparsity/{target:.2f}": value for target, value
                            in raw.attrs.get("measured_sparsity", {}).items()})
            self._log(metrics, version, path)
        except Exception:
            self.errors[version] = traceback.format_exc()

    def _finish(self, raw: pd.DataFrame, version: int, epoch: int) -> pd.DataFrame:
        htl = self.htl
        table = raw.copy()
        table["h_raw"] = table["h"]
        with self.lock:
            prev = self.tables.get(max(self.tables, default=0))
        if prev is not None and htl.get("beta", 0.5) > 0:
            prev_h = prev.set_index("id")["h"].reindex(table["id"]).to_numpy()
            fresh = np.isnan(prev_h)
            smoothed = ema(np.where(fresh, table["h"], prev_h), table["h"].to_numpy(),
                           htl.get("beta", 0.5))
            table["h"] = smoothed
        scores = method_scores(table, htl["method"], seed=self.seed, version=version,
                               gt_aware=htl.get("gt_aware", False))
        if scores is None:
            table["weight"], table["selected"] = 1.0, False
        else:
            w, sel = attention_weights(scores, lam=htl["lam"], q=htl.get("q"),
                                       tau=htl.get("tau"),
                                       weighting=htl.get("weighting", "hard"),
                                       seed=self.seed * 7919 + version)
            table["weight"], table["selected"] = w, sel
            table["attention_score"] = scores
        table["version"] = version
        table["epoch"] = epoch
        return table

    def _metrics(self, table: pd.DataFrame, version: int, wall: float) -> dict[str, float]:
        with self.lock:
            prev = self.tables.get(max(self.tables, default=0))
        sel = set(table.loc[table["selected"], "id"])
        metrics = {"htl/set_size": float(len(sel)), "htl/refresh_wall_s": wall,
                   "htl/version": float(version)}
        if prev is not None:
            prev_sel = set(prev.loc[prev["selected"], "id"])
            union = sel | prev_sel
            metrics["htl/jaccard_prev"] = len(sel & prev_sel) / len(union) if union else 1.0
        for q in (0.1, 0.5, 0.9):
            metrics[f"htl/h_q{int(q * 100)}"] = float(np.quantile(table["h"], q))
        return metrics

    def _log(self, metrics: dict[str, float], version: int, path: Path) -> None:
        if self.outbox is None:
            return
        # kept on disk until the tracking server takes it (the table itself is already there)
        with self.outbox_lock:
            self.outbox.metrics(metrics, step=version)
            self.outbox.artifact(path, "htl")


def spec_from_config(cfg) -> ScoringSpec:
    """ScoringSpec for an ExperimentConfig (model, sparsities, labels the setting has, and
    scorer resources)."""
    from htl_ray.supervision import SETTINGS

    objective = SETTINGS[cfg.supervision.setting]
    return ScoringSpec(
        model=asdict(cfg.model), sparsities=tuple(cfg.htl.sparsities), method=cfg.htl.pruning,
        with_labels=objective.scores_with_labels, label_kind=objective.label_kind,
        pseudo_labels=objective.scores_pseudo_labels,
        batch_size=cfg.htl.scorer_batch_size, pool_size=cfg.htl.scorer_actors,
        cpus_per_actor=cfg.htl.scorer_cpus, gpus_per_actor=cfg.htl.scorer_gpus,
        threads=cfg.htl.scorer_threads, start_timeout_s=cfg.htl.scorer_start_timeout_s,
        precision=cfg.train.precision, memory_format=cfg.train.memory_format,
        signals=METHODS[cfg.htl.method].signals)
