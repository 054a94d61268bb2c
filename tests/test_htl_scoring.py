import numpy as np
import pytest
import torch

from htl_ray.htl.scoring import (
    disagreement,
    ema,
    gt_gap,
    majority_mask,
    pie_disagreement,
    select_htl,
)


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)[None]


def test_disagreement_and_gt_gap_hand_computed():
    dense = _m([[1, 1, 0, 0]])
    pruned = _m([[1, 0, 0, 0]])
    gt = _m([[1, 1, 1, 0]])
    assert disagreement(dense, pruned).item() == pytest.approx(1 - 1 / 2)
    # IoU(dense, gt) = 2/3, IoU(pruned, gt) = 1/3 → gap 1/3; reversed roles clip at 0
    assert gt_gap(dense, pruned, gt).item() == pytest.approx(1 / 3)
    assert gt_gap(pruned, dense, gt).item() == 0.0
    empty = _m([[0, 0, 0, 0]])
    assert disagreement(empty, empty).item() == 0.0        # two empty masks agree


def test_ema_and_selection():
    np.testing.assert_allclose(ema(None, [0.2, 0.4], 0.5), [0.2, 0.4])
    np.testing.assert_allclose(ema(np.array([0.2, 0.4]), np.array([0.6, 0.0]), 0.5), [0.4, 0.2])
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.0])
    assert select_htl(scores, q=0.2).tolist() == [False, True, False, False, False]
    assert select_htl(scores, q=0.4).sum() == 2 and select_htl(scores, q=0.4)[1]
    assert select_htl(scores, tau=0.5).tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="q=0"):
        select_htl(scores, q=0)


def test_pie_population_uses_majority_masks():
    a, b, c = _m([[1, 1, 0, 0]]), _m([[1, 0, 0, 0]]), _m([[1, 1, 1, 0]])
    assert majority_mask([a, b, c]).tolist() == [[[True, True, False, False]]]
    assert pie_disagreement([a, b, c], [a, a, a]).item() == 0.0
    assert pie_disagreement([a, b, c], [b, b, c]).item() == pytest.approx(0.5)


class _Fixed(torch.nn.Module):
    """A 'model' that returns fixed logits, to hand-compute population scores."""

    def __init__(self, mask):
        super().__init__()
        self.logits = torch.tensor(mask, dtype=torch.float32)[None, None] * 20 - 10

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_population_scores_compare_majority_masks():
    from htl_ray.htl.scoring import score_batch, score_population_batch

    x = torch.zeros(1, 3, 1, 4)
    a, b, c = [[1, 1, 0, 0]], [[1, 0, 0, 0]], [[1, 1, 1, 0]]
    single = score_batch(_Fixed(a), {0.5: _Fixed(b)}, x)
    assert single["h"][0] == pytest.approx(0.5)                  # 1 − IoU(a, b)
    pop = score_population_batch([(_Fixed(a), {0.5: _Fixed(b)}), (_Fixed(c), {0.5: _Fixed(c)}),
                                  (_Fixed(a), {0.5: _Fixed(a)})], x)
    # dense majority of (a, c, a) = a; pruned majority of (b, c, a) = a → full agreement
    assert pop["h"][0] == 0.0 and pop["d_0.50"][0] == 0.0
