"""Mean Teacher (Tarvainen & Valpola 2017) for segmentation with a fraction of masks.

The teacher is an exponential moving average of the student's weights; the student learns
from the masks it has and from agreeing with the teacher on differently perturbed views of
every image. For segmentation the views differ by noise and by flips, and the teacher's
prediction is flipped back before comparing, so the two predictions describe the same pixels.
"""

from __future__ import annotations

import copy
import math

import torch

from htl_ray.losses import BceDiceLoss


def make_teacher(student: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float,
               step: int) -> float:
    """teacher ← α·teacher + (1 − α)·student with α = min(1 − 1/(step + 1), decay), so the
    teacher follows the student closely at first. Floating buffers (BatchNorm statistics) are
    averaged the same way, so the teacher's normalisation matches its averaged weights (copying
    the student's statistics onto EMA weights makes the teacher jump while the student moves
    fast); integer buffers (batch counters) are copied. Returns the α used."""
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t.is_floating_point():
            t.mul_(alpha).add_(s, alpha=1.0 - alpha)
        else:
            t.copy_(s)
    return alpha


def consistency_rampup(epoch: int, rampup_epochs: int) -> float:
    """exp(−5(1 − t)²) for t = epoch / rampup_epochs in [0, 1] (the paper's schedule)."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(1.0, max(0.0, epoch / rampup_epochs))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def perturb(images: torch.Tensor, noise_std: float, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise plus a random horizontal flip per image; returns (view, flipped flags)."""
    b = images.shape[0]
    flipped = torch.rand(b, generator=generator) < 0.5        # CPU generator: reproducible
    view = torch.where(flipped.view(b, 1, 1, 1).to(images.device), images.flip(3), images)
    if noise_std:
        noise = torch.randn(view.shape, generator=generator).to(images.device)
        view = view + noise_std * noise
    return view.clamp(0, 1), flipped


def unflip(pred: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    return torch.where(flipped.view(-1, 1, 1, 1).to(pred.device), pred.flip(3), pred)


def semi_per_sample_loss(student: torch.nn.Module, teacher: torch.nn.Module,
                         images: torch.Tensor, masks: torch.Tensor, labeled: torch.Tensor,
                         supervised_loss: BceDiceLoss, consistency_weight: float,
                         noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """[B] per-image loss: supervised loss on labeled rows only (scaled so its batch mean is
    the mean over the labeled rows) + consistency_weight · MSE(student, teacher) on every row.

    Masks of unlabeled rows are never read: only `masks[labeled]` enters the loss."""
    b = images.shape[0]
    device = images.device
    labeled = labeled.to(device=device, dtype=torch.bool)
    s_view, s_flip = perturb(images, noise_std, generator)
    t_view, t_flip = perturb(images, noise_std, generator)
    s_logits = unflip(student(s_view.to(device)), s_flip)
    with torch.no_grad():
        t_prob = torch.sigmoid(unflip(teacher(t_view.to(device)), t_flip))
    loss = consistency_weight * ((torch.sigmoid(s_logits) - t_prob) ** 2).flatten(1).mean(1)
    n_lab = int(labeled.sum())
    if n_lab:
        sup = supervised_loss(s_logits[labeled], masks[labeled].to(device))
        loss = loss.index_add(0, labeled.nonzero().flatten(), sup * (b / n_lab))
    return loss
