"""Each comparator changes the weights it should, and no others."""

import numpy as np
import pytest
import torch
from coordinators import N
from coordinators import coordinator as _coordinator
from coordinators import score_table as _table

from htl_ray.htl.attention import (
    ATTENTION,
    attended_count,
    attention_weights,
    oversample_counts,
)
from htl_ray.losses import make_loss


@pytest.mark.parametrize("method, column", [("htl", "h"), ("loss", "loss"), ("el2n", "el2n"),
                                            ("tta", "tta"), ("entropy", "entropy")])
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


def test_attention_strategies_and_oversampling():
    w = np.array([0.5, 1.0, 2.0])
    assert ATTENTION["reweight"].split(w)[0].tolist() == w.tolist()
    assert ATTENTION["oversample"].split(w)[1].tolist() == w.tolist()
    lw, sw = ATTENTION["both"].split(w)
    assert np.allclose(lw * sw, w)
    counts = np.stack([oversample_counts(w, np.random.default_rng(i)) for i in range(4000)])
    assert np.allclose(counts.mean(0), w, atol=0.05)          # expected copies = weight


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


@pytest.mark.parametrize("method, column", [("htl", "h"), ("loss", "loss"), ("tta", "tta"),
                                            ("entropy", "entropy"), ("random", None)])
def test_negative_lambda_down_weights_the_attended_set_and_renormalises(tmp_path, method,
                                                                         column):
    """λ = −0.6, q = 0.25 of 20: the 5 attended samples get 0.4, the 15 others 1, then all
    are divided by their mean 0.85 — the others gain what the attended set loses; the placebo
    down-weights a random set of the same size by the same λ."""
    table = _table()
    out = _coordinator(tmp_path, method, lam=-0.6)._finish(table, version=1, epoch=0)
    w = out.set_index("id").weight
    chosen = list(out.loc[out.selected, "id"])
    assert len(chosen) == 5
    if column is not None:
        assert set(chosen) == set(table.nlargest(5, column).id)
    mean = (15 * 1 + 5 * 0.4) / 20
    assert np.allclose(w[chosen], 0.4 / mean) and np.allclose(w.drop(chosen), 1 / mean)
    assert w.mean() == pytest.approx(1.0) and (w > 0).all()


def test_lambda_must_stay_above_minus_one_and_soft_weights_take_no_negative_lambda():
    scores = np.linspace(0, 1, 10)
    for lam, weighting in ((-1.0, "hard"), (-1.5, "hard"), (-0.5, "soft")):
        with pytest.raises(ValueError, match=r"htl.lam=.*λ > −1"):
            attention_weights(scores, lam=lam, q=0.2, weighting=weighting)
    # λ = 0 attends nothing: every weight 1, whichever set is selected
    w, sel = attention_weights(scores, lam=0.0, q=0.2)
    assert np.allclose(w, 1.0) and sel.sum() == 2
    # λ just above −1: the attended set almost drops out, weights stay positive
    w, sel = attention_weights(scores, lam=-0.99, q=0.5)
    assert np.allclose(w[sel], 0.01 / 0.505) and np.allclose(w[~sel], 1 / 0.505)


def test_down_weighting_by_oversampling_draws_the_attended_set_less_often():
    """oversample: the rates are the weights, so an attended sample at λ = −0.5 (rate 2/3 of
    an epoch's draws after renormalisation over q = 0.5) is drawn about a third less often."""
    scores = np.arange(1000, dtype=float)
    w, sel = attention_weights(scores, lam=-0.5, q=0.5)
    assert np.allclose(w[sel], 0.5 / 0.75) and np.allclose(w[~sel], 1 / 0.75)
    counts = oversample_counts(w, np.random.default_rng(0))
    assert counts[sel].mean() == pytest.approx(2 / 3, abs=0.05)
    assert counts[~sel].mean() == pytest.approx(4 / 3, abs=0.05)
    assert counts.sum() == pytest.approx(1000, rel=0.05)


def test_the_attended_set_is_counted_on_its_side_of_one_whichever_the_sign_of_lambda():
    scores = np.arange(10, dtype=float)
    up, sel = attention_weights(scores, lam=2.0, q=0.3)
    down, _ = attention_weights(scores, lam=-0.5, q=0.3)
    assert attended_count(up, lam=2.0) == attended_count(down, lam=-0.5) == sel.sum() == 3
    assert attended_count(np.ones(10), lam=0.0) == 0
