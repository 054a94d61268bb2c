import math

import pytest
import torch

from htl_ray.losses import BceDiceLoss, per_sample_bce, per_sample_soft_dice, weighted_mean


def test_bce_of_zero_logits_is_log2_per_image():
    logits = torch.zeros(3, 1, 4, 4)
    target = torch.randint(0, 2, (3, 1, 4, 4)).float()
    torch.testing.assert_close(per_sample_bce(logits, target), torch.full((3,), math.log(2)))


def test_soft_dice_hand_computed_and_perfect():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    logits = torch.zeros(1, 1, 2, 2)                    # p = 0.5 everywhere
    # inter = 0.5, sum p = 2, sum t = 1 → 1 − (1 + 1)/(3 + 1) = 0.5 with smooth=1
    assert per_sample_soft_dice(logits, target).item() == pytest.approx(0.5)
    perfect = (target * 2 - 1) * 50
    assert per_sample_soft_dice(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(1, 1, 2, 2)
    assert per_sample_soft_dice(torch.full_like(empty, -50), empty).item() == pytest.approx(0)


def test_losses_are_per_sample_and_independent_of_the_rest_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.5).float()
    loss = BceDiceLoss()(logits, target)
    assert loss.shape == (4,)
    other = logits.clone()
    other[1:] = torch.randn(3, 1, 8, 8)
    assert BceDiceLoss()(other, target)[0] == loss[0]   # sample 0 does not see its neighbours
    single = BceDiceLoss()(logits[2:3], target[2:3])
    torch.testing.assert_close(single[0], loss[2])


def test_weighted_mean():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert weighted_mean(losses).item() == pytest.approx(2.5)
    assert weighted_mean(losses, torch.ones(4)).item() == pytest.approx(2.5)
    w = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert weighted_mean(losses, w).item() == pytest.approx((6 + 8) / 4)
    with pytest.raises(ValueError, match="weights shape"):
        weighted_mean(losses, torch.ones(3))
