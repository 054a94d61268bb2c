"""The refresh coordinator survives the death of its process."""

from __future__ import annotations

import os
import signal

import numpy as np

from htl_ray.config import load_config
from htl_ray.data.loading import split_dataset
from htl_ray.htl.coordinator import load_versions, version_path
from htl_ray.models import create_model
from htl_ray.train.trainer import start_coordinator


def _pid(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_a_killed_coordinator_comes_back_from_its_last_persisted_version(
        ray_cluster, synth_dataset, tmp_path):
    ray = ray_cluster
    cfg = load_config(None, [f"data.path={synth_dataset}", "htl.method=htl",
                             "htl.sparsities=[0.5]", "htl.scorer_batch_size=64",
                             "model.decoder_channels=[16,8,8,4,4]"])
    run_dir = tmp_path / "run"
    coordinator = start_coordinator(cfg, run_dir, split_dataset(synth_dataset, "train", 24),
                                    None, None)
    try:
        state = create_model(cfg.model).state_dict()
        v1 = ray.get(coordinator.submit.remote([ray.put(state)], 0))
        assert ray.get(coordinator.wait_for.remote(v1)) == v1 == 1
        ids, weights = ray.get(coordinator.weights.remote(1))
        assert version_path(run_dir, 1).is_file() and len(ids) == 24

        before = _pid(coordinator)
        os.kill(before, signal.SIGKILL)                 # the process, not a polite ray.kill
        # the next call is retried on the restarted actor, which reloaded v1 from disk
        assert ray.get(coordinator.latest_version.remote()) == 1
        assert _pid(coordinator) != before
        ids_after, weights_after = ray.get(coordinator.weights.remote(1))
        assert ids_after.tolist() == ids.tolist()
        np.testing.assert_array_equal(weights_after, weights)
        # and it goes on numbering after what it found
        v2 = ray.get(coordinator.submit.remote([ray.put(state)], 1))
        assert ray.get(coordinator.wait_for.remote(v2)) == v2 == 2
        assert sorted(load_versions(run_dir)) == [1, 2]
    finally:
        ray.kill(coordinator)
