"""Box loss on hand-computed cases."""

import pytest
import torch

from htl_ray.supervision.box_loss import BoxLoss, pairwise_loss, projection_loss, rgb_to_lab


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_projection_loss_is_zero_for_the_box_itself():
    box = _box(8, 8, 2, 6, 2, 6)
    assert projection_loss(box, box).item() == pytest.approx(0.0, abs=1e-6)
    # any mask with the same projections also scores 0: a cross touching every row/column
    cross = torch.zeros_like(box)
    cross[..., 2:6, 3] = 1
    cross[..., 4, 2:6] = 1
    assert projection_loss(cross, box).item() == pytest.approx(0.0, abs=1e-6)


def test_projection_loss_of_a_shifted_box():
    box = _box(8, 8, 2, 6, 2, 6)
    shifted = _box(8, 8, 2, 6, 4, 8)          # 2 px to the right: x-overlap 2 of 4 columns
    # x: 1 − 2·2/(4+4) = 0.5; y: identical projections → 0
    assert projection_loss(shifted, box).item() == pytest.approx(0.5, abs=1e-6)
    both = _box(8, 8, 4, 8, 4, 8)             # also 2 px down → 0.5 + 0.5
    assert projection_loss(both, box).item() == pytest.approx(1.0, abs=1e-6)
    half = 0.5 * box                          # soft prediction: 1 − 2·2/(1+4) = 0.2 per axis
    assert projection_loss(half, box).item() == pytest.approx(0.4, abs=1e-6)


def test_lab_conversion_of_reference_colours():
    lab = rgb_to_lab(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2))
    assert lab[0, :, 0, 0].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.1)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    assert white.tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.05)


def test_pairwise_term_wants_equal_labels_on_similar_colours_only():
    h = w = 12
    box = _box(h, w, 0, h, 0, w)
    uniform = torch.full((1, 3, h, w), 0.5)
    confident = torch.full((1, 1, h, w), 8.0)
    assert pairwise_loss(confident, uniform, box).item() < 1e-3
    checker = (torch.arange(h).view(-1, 1) + torch.arange(w).view(1, -1)) % 4 < 2
    mixed = torch.where(checker, 8.0, -8.0).view(1, 1, h, w)
    assert pairwise_loss(mixed, uniform, box).item() > 1.0
    # the same disagreement along a strong colour edge costs nothing: left half black
    two_tone = uniform.clone()
    two_tone[..., : w // 2] = 0.0
    split = torch.where(torch.arange(w) < w // 2, 8.0, -8.0).view(1, 1, 1, w).expand(1, 1, h, w)
    assert pairwise_loss(split, two_tone, box).item() < 1e-3
    assert pairwise_loss(split, uniform, box).item() > 0.5


def test_box_loss_is_per_image_and_ramps_the_pairwise_term():
    box = torch.cat([_box(8, 8, 2, 6, 2, 6), _box(8, 8, 0, 4, 0, 4)])
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = BoxLoss(1.0, 1.0)
    per_image = loss(logits, box, images, pairwise_ramp=0.0)
    assert per_image.shape == (2,)
    assert torch.allclose(per_image, projection_loss(torch.sigmoid(logits), box))
    full = loss(logits, box, images, pairwise_ramp=1.0)
    assert torch.allclose(full - per_image, pairwise_loss(logits, images, box))
