import numpy as np
import pytest
import torch

from htl_ray.htl.scoring import (
    box_of,
    disagreement,
    ema,
    gt_gap,
    majority_mask,
    pie_disagreement,
    score_population_batch,
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


def test_box_of_fills_each_masks_tight_box():
    m = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    m[0, 0, 1, 1] = m[0, 0, 3, 4] = True                 # two pixels span rows 1-3, cols 1-4
    box = box_of(m)
    assert box[0, 0, 1:4, 1:5].all() and box[0].sum() == 12
    assert box[1].sum() == 0                             # empty stays empty


class _Const(torch.nn.Module):
    """A 'model' that always predicts one fixed mask (logit ±10)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.logits = torch.where(mask, 10.0, -10.0)

    def forward(self, x):
        return self.logits.expand(x.shape[0], *self.logits.shape[1:])


def test_gt_aware_term_uses_box_iou_for_box_labels():
    label = torch.zeros(1, 1, 8, 8)
    label[..., 2:6, 2:6] = 1                             # the label box
    cross = torch.zeros(1, 1, 8, 8, dtype=torch.bool)    # dense: a cross spanning the box
    cross[..., 2:6, 3] = cross[..., 3, 2:6] = True
    corner = torch.zeros(1, 1, 8, 8, dtype=torch.bool)   # pruned: the top-left 2x2 of it
    corner[..., 2:4, 2:4] = True
    pop = [(_Const(cross), {0.5: _Const(corner)})]
    images = torch.zeros(1, 3, 8, 8)
    as_box = score_population_batch(pop, images, label, label_kind="box")
    as_mask = score_population_batch(pop, images, label, label_kind="mask")
    # boxes: IoU(box(cross), label) = 1, IoU(box(corner), label) = 4/16
    assert as_box["gt_gap"][0] == pytest.approx(1 - 4 / 16)
    # masks: IoU(cross, label) = 7/16, IoU(corner, label) = 4/16
    assert as_mask["gt_gap"][0] == pytest.approx(7 / 16 - 4 / 16)


def test_semi_loss_and_el2n_use_the_label_where_there_is_one_else_the_models_own_mask():
    """Semi-supervised: an unlabeled row's mask is all zeros (hidden), so scoring it against
    that mask would call every lesion an error; it is scored against the dense model's own
    mask instead (a pseudo-label: loss and EL2N measure the model's uncertainty there)."""
    from htl_ray.htl.scoring import binarize, el2n
    from htl_ray.losses import BceDiceLoss

    torch.manual_seed(0)
    dense = torch.nn.Conv2d(3, 1, 3, padding=1)
    images = torch.rand(4, 3, 8, 8)
    masks = (torch.rand(4, 1, 8, 8) > 0.5).float()
    masks[2:] = 0.0                                        # rows 2, 3: unlabeled (hidden)
    labeled = torch.tensor([True, True, False, False])
    out = score_population_batch([(dense, {0.5: dense})], images, masks, labeled=labeled)
    logits = dense(images).detach()
    pseudo = torch.cat([masks[:2], binarize(logits[2:]).float()])
    np.testing.assert_allclose(out["loss"], BceDiceLoss()(logits, pseudo).double().numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(out["el2n"], el2n(logits, pseudo).double().numpy(), rtol=1e-5)
    # labeled rows: exactly the supervised scores; unlabeled: not those against the zero mask
    sup = score_population_batch([(dense, {0.5: dense})], images, masks)
    np.testing.assert_allclose(out["loss"][:2], sup["loss"][:2], rtol=1e-6)
    assert (np.abs(out["el2n"][2:] - sup["el2n"][2:]) > 1e-3).all()
    # EL2N against its own mask is min(p, 1 − p): below 0.5, high where the model is unsure
    assert (out["el2n"][2:] < 0.5).all()
    # no GT-aware term: most rows have no ground truth; which target each row had is kept
    assert not {"gt_gap", "h_gt", "dense_iou"} & set(out)
    assert out["labeled"].tolist() == [1.0, 1.0, 0.0, 0.0]
