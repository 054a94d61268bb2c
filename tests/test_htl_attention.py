"""Each comparator changes the weights it should, and no others."""

import numpy as np
import pandas as pd
import pytest
import torch

from htl_ray.htl.attention import (
    ATTENTION,
    attention_weights,
    method_scores,
    oversample_counts,
)
from htl_ray.htl.coordinator import RefreshCoordinator
from htl_ray.htl.scorer import ScoringSpec
from htl_ray.losses import make_loss

N = 20


def _table():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"s{i:02d}" for i in range(N)], "h": rng.random(N),
                         "h_gt": rng.random(N), "loss": rng.random(N), "el2n": rng.random(N)})


def _coordinator(tmp_path, method, **htl):
    cfg = {"method": method, "lam": 2.0, "q": 0.25, "tau": None, "weighting": "hard",
           "beta": 0.5, "gt_aware": False, "population": 1, **htl}
    return RefreshCoordinator(str(tmp_path), None, ScoringSpec(model={}), cfg, seed=0)


@pytest.mark.parametrize("method, column", [("htl", "h"), ("loss", "loss"), ("el2n", "el2n")])
def test_ranking_methods_upweight_exactly_their_top_q(tmp_path, method, column):
    table = _table()
    out = _coordinator(tmp_path, method)._finish(table, version=1, epoch=0)
    top = set(table.nlargest(5, column).id)                 # q = 0.25 of 20
    assert set(out.loc[out.selected, "id"]) == top
    w = out.set_index("id").weight
    mean = (15 * 1 + 5 * 3) / 20                             # hard: 1 + λ on the selected
    assert np.allclose(w[list(top)], 3 / mean)
    assert np.allclose(w.drop(list(top)), 1 / mean)          # every other sample: unchanged
    assert w.mean() == pytest.approx(1.0)


def test_random_placebo_has_the_same_size_and_lambda_but_ignores_the_scores(tmp_path):
    table = _table()
    out1 = _coordinator(tmp_path, "random")._finish(table, version=1, epoch=0)
    out2 = _coordinator(tmp_path, "random")._finish(table, version=2, epoch=0)
    again = _coordinator(tmp_path, "random")._finish(table, version=1, epoch=0)
    assert out1.selected.sum() == 5 and sorted(set(out1.weight.round(9))) == sorted(
        set(_coordinator(tmp_path, "htl")._finish(table, 1, 0).weight.round(9)))
    assert out1.selected.tolist() == again.selected.tolist()          # seeded
    assert out1.selected.tolist() != out2.selected.tolist()           # fresh per refresh
    # the scores are not used: reshuffling h changes nothing
    shuffled = table.assign(h=table.h.sample(frac=1, random_state=1).to_numpy())
    assert _coordinator(tmp_path, "random")._finish(shuffled, 1, 0).selected.tolist() == \
        out1.selected.tolist()


@pytest.mark.parametrize("method", ["erm", "focal"])
def test_erm_and_focal_leave_every_weight_at_one(tmp_path, method):
    out = _coordinator(tmp_path, method)._finish(_table(), version=1, epoch=0)
    assert (out.weight == 1.0).all() and not out.selected.any()


def test_focal_changes_the_loss_not_the_weights():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float()
    bce = make_loss("bce_dice")(logits, target)
    focal = make_loss("focal_dice", gamma=2.0)(logits, target)
    assert (focal < bce).all()                                 # easy pixels are down-weighted
    assert torch.allclose(make_loss("focal_dice", gamma=0.0)(logits, target), bce, atol=1e-6)


def test_gt_aware_and_soft_and_tau_variants(tmp_path):
    table = _table()
    out = _coordinator(tmp_path, "htl", gt_aware=True)._finish(table, 1, 0)
    assert set(out.loc[out.selected, "id"]) == set(table.nlargest(5, "h_gt").id)
    w, sel = attention_weights(table.h.to_numpy(), lam=1.0, q=None, tau=0.5, weighting="soft")
    assert (sel == (table.h >= 0.5)).all()
    expected = 1 + table.h / table.h.mean()
    assert np.allclose(w, expected / expected.mean())


def test_ema_across_refreshes(tmp_path):
    coord = _coordinator(tmp_path, "htl", beta=0.5)
    first = coord._finish(_table(), 1, 0)
    coord.tables[1] = first
    second_raw = _table().assign(h=0.0)
    second = coord._finish(second_raw, 2, 1)
    assert np.allclose(second.h, 0.5 * first.h)              # h_t = β h_{t−1} + (1−β) h_new
    assert np.allclose(second.h_raw, 0.0)
    assert np.allclose(method_scores(second, "htl", 0, 2), second.h)


def test_attention_strategies_and_oversampling():
    w = np.array([0.5, 1.0, 2.0])
    assert ATTENTION["reweight"].split(w)[0].tolist() == w.tolist()
    assert ATTENTION["oversample"].split(w)[1].tolist() == w.tolist()
    lw, sw = ATTENTION["both"].split(w)
    assert np.allclose(lw * sw, w)
    counts = np.stack([oversample_counts(w, np.random.default_rng(i)) for i in range(4000)])
    assert np.allclose(counts.mean(0), w, atol=0.05)          # expected copies = weight


def test_a_restarted_coordinator_restores_its_pie_population(ray_cluster, tmp_path):
    import ray

    states = [{"w": torch.full((3,), float(v))} for v in range(1, 4)]
    first = _coordinator(tmp_path, "htl", population=2)
    for version, state in enumerate(states, start=1):
        first.population.append(ray.put(state))
        first._keep_snapshot(state, version)
    kept = sorted(p.name for p in (tmp_path / "htl" / "snapshots").iterdir())
    assert kept == ["v0002.pt", "v0003.pt"]                 # only the last M = 2 stay on disk
    restarted = _coordinator(tmp_path, "htl", population=2)
    restored = [ray.get(ref)["w"][0].item() for ref in restarted.population]
    assert restored == [2.0, 3.0]                          # same members, oldest first
    assert not (tmp_path / "htl" / "snapshots" / "v0001.pt").exists()
    assert len(_coordinator(tmp_path / "other", "htl", population=1).population) == 0


def test_refreshes_score_one_at_a_time_and_publish_in_order(tmp_path, monkeypatch):
    """Two refreshes submitted back to back (async refresh slower than R epochs): the second
    waits for the first, so they never split the scorer's CPUs, and its EMA sees v1."""
    import threading
    import time

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
        return _table()

    monkeypatch.setattr(module, "score_dataset", fake_score)
    coord = _coordinator(tmp_path, "htl")
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
    assert np.allclose(coord.tables[2]["h"], _table()["h"])


@pytest.mark.parametrize("method", ["loss", "el2n"])
def test_semi_loss_and_el2n_attend_the_top_q_of_labeled_and_unlabeled_images_alike(tmp_path,
                                                                                   method):
    """Semi setting: 5 labeled images scored against their masks (large losses), 15 against
    pseudo-labels (small ones). Ranked on one scale the top quarter would be the 5 labeled
    images; ranked within each group it is the hardest of each, in proportion."""
    rng = np.random.default_rng(3)
    labeled = np.arange(N) < 5
    table = _table().assign(**{method: np.where(labeled, 1.0 + rng.random(N), rng.random(N)),
                               "labeled": labeled.astype(float)})
    assert set(table.nlargest(5, method).id) == set(table.id[labeled])    # one scale: all
    out = _coordinator(tmp_path, method)._finish(table, version=1, epoch=0)
    chosen = set(out.loc[out.selected, "id"])
    hardest = (set(table[labeled].nlargest(1, method).id)
               | set(table[~labeled].nlargest(4, method).id))
    assert len(chosen) == 5 and chosen <= hardest | set(table[labeled].nlargest(2, method).id)
    assert len(chosen & set(table.id[~labeled])) >= 3                      # ~q of each group
    assert set(table[~labeled].nlargest(3, method).id) <= chosen
    # the ranks live in (0, 1] within each group; HTL (one scale for all) is left as it is
    ranks = out.set_index("id")["attention_score"]
    assert ranks[table.id[labeled]].max() == 1.0 == ranks[table.id[~labeled]].max()
    htl = _coordinator(tmp_path, "htl")._finish(table, version=1, epoch=0)
    assert np.allclose(htl["attention_score"], htl["h"])


def test_each_attention_strategy_trains_its_rows_with_their_loss_weights():
    """reweight keeps every row and weighs the loss; oversample draws rows ⌊w⌋ + Bernoulli
    times with loss weight 1; both does each with √w; an empty draw still trains one row at
    weight 0, so every DDP rank steps once per batch."""
    w = np.array([0.5, 0.5, 2.0, 1.0])
    rows, loss_w = ATTENTION["reweight"].batch(w, np.random.default_rng(0))
    assert rows.tolist() == [0, 1, 2, 3] and loss_w.tolist() == w.tolist()

    draws = [ATTENTION["oversample"].batch(w, np.random.default_rng(s)) for s in range(400)]
    counts = np.mean([np.bincount(r, minlength=4) for r, _ in draws], axis=0)
    assert np.allclose(counts, w, atol=0.08)              # expected copies = w
    assert all((lw == 1.0).all() for _, lw in draws)
    assert all((np.bincount(r, minlength=4)[2] == 2) for r, _ in draws)   # ⌊2⌋ + 0

    rows, loss_w = ATTENTION["both"].batch(np.array([4.0, 4.0]), np.random.default_rng(0))
    assert rows.tolist() == [0, 0, 1, 1] and np.allclose(loss_w, 2.0)

    rows, loss_w = ATTENTION["oversample"].batch(np.array([0.0, 0.0]), np.random.default_rng(0))
    assert rows.tolist() == [0] and loss_w.tolist() == [0.0]
