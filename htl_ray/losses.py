"""Per-sample losses (reduction="none") so that HTL attention can weight each image.

smp's DiceLoss pools the whole batch into one Dice, which makes per-sample weighting
impossible; here every loss returns one value per image, and `weighted_mean` applies the
per-sample weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def per_sample_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the pixels of each image → shape [B]."""
    loss = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    return loss.reshape(loss.shape[0], -1).mean(1)


def per_sample_soft_dice(logits: torch.Tensor, target: torch.Tensor,
                         smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image → shape [B]. `smooth` keeps empty-vs-empty at loss 0."""
    prob = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    t = target.float().reshape(target.shape[0], -1)
    inter = (prob * t).sum(1)
    denom = prob.sum(1) + t.sum(1)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


class BceDiceLoss:
    """bce_weight·BCE + dice_weight·(1 − soft Dice), per image."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        if self.bce_weight:
            loss = loss + self.bce_weight * per_sample_bce(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * per_sample_soft_dice(logits, target, self.smooth)
        return loss


def per_sample_focal(logits: torch.Tensor, target: torch.Tensor,
                     gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over each image's pixels → [B]; γ=0 is BCE."""
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = torch.exp(-bce)
    loss = (1 - p_t) ** gamma * bce
    return loss.reshape(loss.shape[0], -1).mean(1)


class FocalDiceLoss(BceDiceLoss):
    """bce_weight·focal + dice_weight·(1 − soft Dice), per image: the focal-loss comparator."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 gamma: float = 2.0):
        super().__init__(bce_weight, dice_weight, smooth)
        self.gamma = gamma

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bce_weight * per_sample_focal(logits, target, self.gamma)
        if self.dice_weight:
            loss = loss + self.dice_weight * per_sample_soft_dice(logits, target, self.smooth)
        return loss


# train.loss: name → the loss, from (bce_weight, dice_weight, focal γ); the config accepts these
# names (config.RegistryNames)
LOSSES: dict[str, Callable[[float, float, float], BceDiceLoss]] = {
    "bce_dice": lambda bce, dice, gamma: BceDiceLoss(bce, dice),
    "focal_dice": lambda bce, dice, gamma: FocalDiceLoss(bce, dice, gamma=gamma),
}


def make_loss(name: str, *, bce_weight: float = 1.0, dice_weight: float = 1.0,
              gamma: float = 2.0) -> BceDiceLoss:
    if name not in LOSSES:
        raise ValueError(f"train.loss={name!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[name](bce_weight, dice_weight, gamma)


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of w·loss over the batch. Weights are renormalised to mean 1 over the training set
    by the attention strategy, so unit weights reproduce plain ERM exactly."""
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} != losses "
                         f"{tuple(per_sample.shape)}")
    return (weights.to(per_sample) * per_sample).mean()
