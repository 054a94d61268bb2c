"""The refresh coordinator: versions published in order, one refresh scoring at a time, the
EMA of h across refreshes, and the PIE population a restarted coordinator finds again."""

import threading
import time

import numpy as np
import torch
from coordinators import coordinator, score_table

from htl_ray.htl.attention import method_scores


def test_ema_across_refreshes(tmp_path):
    coord = coordinator(tmp_path, "htl", beta=0.5)
    first = coord._finish(score_table(), 1, 0)
    coord.tables[1] = first
    second_raw = score_table().assign(h=0.0)
    second = coord._finish(second_raw, 2, 1)
    assert np.allclose(second.h, 0.5 * first.h)              # h_t = β h_{t−1} + (1−β) h_new
    assert np.allclose(second.h_raw, 0.0)
    assert np.allclose(method_scores(second, "htl", seed=0, version=2), second.h)


def test_a_restarted_coordinator_restores_its_pie_population(ray_cluster, tmp_path):
    import ray

    states = [{"w": torch.full((3,), float(v))} for v in range(1, 4)]
    first = coordinator(tmp_path, "htl", population=2)
    for version, state in enumerate(states, start=1):
        first.population.append(ray.put(state))
        first._keep_snapshot(state, version)
    kept = sorted(p.name for p in (tmp_path / "htl" / "snapshots").iterdir())
    assert kept == ["v0002.pt", "v0003.pt"]                 # only the last M = 2 stay on disk
    restarted = coordinator(tmp_path, "htl", population=2)
    restored = [ray.get(ref)["w"][0].item() for ref in restarted.population]
    assert restored == [2.0, 3.0]                          # same members, oldest first
    assert not (tmp_path / "htl" / "snapshots" / "v0001.pt").exists()
    assert len(coordinator(tmp_path / "other", "htl", population=1).population) == 0


def test_refreshes_score_one_at_a_time_and_publish_in_order(tmp_path, monkeypatch):
    """Two refreshes submitted back to back (async refresh slower than R epochs): the second
    waits for the first, so they never split the scorer's CPUs, and its EMA sees v1."""

    from htl_ray.htl import coordinator as module

    active, peak = [0], [0]
    counter = threading.Lock()

    def fake_score(dataset, refs, spec):
        with counter:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with counter:
            active[0] -= 1
        return score_table()

    monkeypatch.setattr(module, "score_dataset", fake_score)
    coord = coordinator(tmp_path, "htl")
    threads = []
    for version in (1, 2):
        coord.timeline[version] = {"submitted": time.time(), "epoch": float(version)}
        t = threading.Thread(target=coord._refresh, args=(version, [], version))
        threads.append(t)
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert not coord.errors and peak[0] == 1 and coord.versions() == [1, 2]
    assert coord.timeline[2]["started"] >= coord.timeline[1]["finished"]
    # v2's h is the EMA of v1's and its own (the same raw scores here: unchanged)
    assert np.allclose(coord.tables[2]["h"], score_table()["h"])
