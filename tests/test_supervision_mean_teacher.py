"""Mean Teacher: the EMA update, the ramp-up, and no hidden mask ever reaching the loss."""

import pytest
import torch

from htl_ray.config import ModelConfig
from htl_ray.losses import BceDiceLoss
from htl_ray.models import create_model
from htl_ray.supervision.mean_teacher import (
    consistency_rampup,
    ema_update,
    make_teacher,
    semi_per_sample_loss,
)

SMALL = ModelConfig(decoder_channels=[16, 8, 8, 4, 4])


def test_ema_update_is_the_weighted_average_of_weights_and_statistics():
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(7.0)
        student[1].num_batches_tracked.fill_(5)
    before = [p.clone() for p in teacher.parameters()]
    alpha = ema_update(teacher, student, decay=0.99, step=1000)
    assert alpha == 0.99
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(t, 0.99 * b + 0.01 * s)
    # BatchNorm statistics are averaged like the weights (0 → 0.01·7); counters are copied
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.07))
    assert int(teacher[1].num_batches_tracked) == 5
    # early steps follow the student closely: α = 1 − 1/(step+1)
    assert ema_update(teacher, student, decay=0.99, step=0) == 0.0
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(),
                                                  strict=True))
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    assert ema_update(teacher, student, decay=0.99, step=3) == pytest.approx(0.75)


def test_consistency_rampup():
    assert consistency_rampup(0, 5) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert consistency_rampup(5, 5) == 1.0 and consistency_rampup(50, 5) == 1.0
    assert consistency_rampup(0, 0) == 1.0
    assert consistency_rampup(1, 5) < consistency_rampup(3, 5) < 1.0


def test_no_hidden_mask_reaches_the_loss():
    """Replace every hidden mask with garbage: the per-image losses and every gradient are
    unchanged; changing a *visible* mask does change them (the test can fail)."""
    torch.manual_seed(0)
    student = create_model(SMALL)
    teacher = make_teacher(student).eval()
    images = torch.rand(6, 3, 32, 32)
    masks = (torch.rand(6, 1, 32, 32) > 0.7).float()
    labeled = torch.tensor([True, False, True, False, False, True])

    def run(m):
        student.zero_grad()
        loss = semi_per_sample_loss(student, teacher, images, m, labeled, BceDiceLoss(), 1.0,
                                    0.05, torch.Generator().manual_seed(4))
        loss.mean().backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    base_loss, base_grad = run(masks)
    garbage = masks.clone()
    garbage[~labeled] = torch.randn(int((~labeled).sum()), 1, 32, 32) * 1e3
    g_loss, g_grad = run(garbage)
    assert torch.equal(base_loss, g_loss)
    assert all(torch.equal(a, b) for a, b in zip(base_grad, g_grad, strict=True))
    visible = masks.clone()
    visible[0] = 1 - visible[0]
    v_loss, v_grad = run(visible)
    assert not torch.equal(base_loss, v_loss)
    assert any(not torch.equal(a, b) for a, b in zip(base_grad, v_grad, strict=True))


def test_semi_loss_terms():
    torch.manual_seed(1)
    student = create_model(SMALL)
    teacher = make_teacher(student).eval()
    images = torch.rand(4, 3, 32, 32)
    masks = (torch.rand(4, 1, 32, 32) > 0.5).float()
    none = torch.zeros(4, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    cons_only = semi_per_sample_loss(student, teacher, images, masks, none, BceDiceLoss(), 1.0,
                                     0.0, gen)
    assert (cons_only >= 0).all() and (cons_only < 0.25).all()     # MSE of probabilities
    zero_weight = semi_per_sample_loss(student, teacher, images, masks, none, BceDiceLoss(),
                                       0.0, 0.0, gen)
    assert torch.equal(zero_weight, torch.zeros(4))
    # one labeled row: its supervised loss is scaled by B / n_labeled so the batch mean equals
    # the mean over labeled rows
    one = torch.tensor([False, True, False, False])
    loss = semi_per_sample_loss(student, teacher, images, masks, one, BceDiceLoss(), 0.0, 0.0,
                                torch.Generator().manual_seed(0))
    student.eval()
    assert loss[[0, 2, 3]].abs().max() == 0
    assert loss.mean().item() > 0
