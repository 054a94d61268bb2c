"""A training rank's side of HTL attention: which version of the weights it trains with, and
the refreshes it has asked the coordinator for (docs/method.md, §One training run).

Rank 0 talks to the refresh coordinator (htl/coordinator.py) and broadcasts its choice, so every
rank adopts the same version at the same epoch; a resumed run keeps the version its checkpoint
trained with.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from htl_ray.collectives import broadcast
from htl_ray.config import HtlConfig
from htl_ray.htl.coordinator import weights_checksum


class HtlClient:
    """The HTL version in use on this rank, its id → weight map, and the pending refresh."""

    def __init__(self, coordinator: Any, *, htl: HtlConfig, epochs: int, version: int):
        self.htl = htl
        self.epochs = epochs
        self.coordinator = coordinator
        self.version = version
        self.resumed_version: int | None = version if version else None
        self.pending: int | None = None
        self.weights: dict[str, float] = {}
        self.checksum = 0.0

    @property
    def enabled(self) -> bool:
        return self.coordinator is not None

    def attends(self, epoch: int) -> bool:
        """Whether `epoch` trains with attention: after the warm-up, once a version exists."""
        return self.enabled and epoch >= self.htl.warmup_epochs and self.version > 0

    def adopt(self, rank: int) -> float:
        """At an epoch start: rank 0 picks the version, every rank adopts it. Returns the time
        this rank waited for the coordinator."""
        if not self.enabled:
            return 0.0
        import ray

        t0 = time.time()
        if rank == 0:
            if self.resumed_version is not None:
                chosen = self.resumed_version          # a resumed run keeps its version
            else:
                if not self.htl.asynchronous:
                    # synchronous: the refresh submitted after the last epoch must be in; after
                    # a worker-group restart this rank does not know it, so wait for them all
                    ray.get(self.coordinator.wait_for.remote(self.pending)
                            if self.pending is not None else self.coordinator.drain.remote())
                error = ray.get(self.coordinator.error.remote())
                if error:
                    raise RuntimeError(f"HTL refresh failed:\n{error}")
                chosen = ray.get(self.coordinator.latest_version.remote())
        else:
            chosen = None
        self.resumed_version = None
        chosen = broadcast(chosen)
        if chosen != self.version or (chosen and not self.weights):
            ids, w = ray.get(self.coordinator.weights.remote(chosen))
            self.weights = dict(zip(ids.tolist(), w.tolist(), strict=True))
            self.checksum = weights_checksum(ids, w)
        self.version = chosen
        return time.time() - t0

    def refreshes_after(self, epoch: int) -> bool:
        """Whether rank 0 hands the coordinator a snapshot at the end of `epoch`."""
        return self.enabled and (epoch + 1) % self.htl.refresh_every == 0 \
            and epoch + 1 < self.epochs

    def catch_up(self, model: Any, epoch: int) -> None:
        """Rank 0, resumed from the checkpoint of `epoch`: the refresh due after it must exist.
        A restarted worker group finds it pending or done in the surviving coordinator; a
        restarted driver lost it with the old coordinator, so the restored model — the very
        snapshot — is submitted again. With synchronous refresh the next epoch then waits for
        it and trains with it, exactly as without the interruption."""
        import ray

        if not self.refreshes_after(epoch):
            return
        found = ray.get(self.coordinator.version_of_epoch.remote(epoch))
        if found is None:
            self.submit(model, epoch)
        else:
            self.pending = found
        if not self.htl.asynchronous:
            self.resumed_version = None

    def submit(self, model: Any, epoch: int) -> None:
        """Hand the coordinator a CPU copy of `model`'s weights, to score after `epoch`."""
        import ray

        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.pending = ray.get(self.coordinator.submit.remote([ray.put(state)], epoch))

    def batch_weights(self, ids: np.ndarray) -> np.ndarray:
        """The adopted version's weight of each sample (1 for a sample it does not list)."""
        return np.array([self.weights.get(str(i), 1.0) for i in ids], dtype=np.float64)
