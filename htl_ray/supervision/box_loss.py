"""Box-supervised segmentation loss (BoxInst, Tian et al. 2021), per image.

With only a box per lesion, two facts still constrain the mask: (1) its projections onto the
x and y axes must equal the box's (a mask touches every column and row of its tight box and
nothing outside it), and (2) neighbouring pixels of similar colour should get the same label.
Both terms are computed per image so HTL weights apply as in supervised training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_1d(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 − 2Σab / (Σa² + Σb²) over the last dim → one value per row (BoxInst's Dice)."""
    return 1.0 - (2.0 * (a * b).sum(-1) + eps) / ((a * a).sum(-1) + (b * b).sum(-1) + eps)


def projection_loss(prob: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """prob, box_mask: [B,1,H,W] → [B]. Dice between max-projections onto x and onto y."""
    p, b = prob[:, 0], box_mask[:, 0].float()
    return dice_1d(p.amax(1), b.amax(1)) + dice_1d(p.amax(2), b.amax(2))


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] sRGB in [0,1] → CIE Lab (D65); colour distances there follow perception."""
    c = torch.where(images > 0.04045, ((images + 0.055) / 1.055) ** 2.4, images / 12.92)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                      [0.0193, 0.1192, 0.9505]], dtype=c.dtype, device=c.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, c)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=c.dtype, device=c.device)
    t = xyz / white.view(1, 3, 1, 1)
    f = torch.where(t > 0.008856, t.clamp(min=1e-12) ** (1 / 3), 7.787 * t + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], dim=1)


# each undirected neighbour pair once: right, down, down-right, down-left (dilation applied)
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """t[..., y+dy, x+dx] at [..., y, x]; outside the image reads 0 (such pairs are masked out)."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (max(0, -dx), max(0, dx), max(0, -dy), max(0, dy)))
    y0, x0 = max(0, dy), max(0, dx)
    return padded[..., y0:y0 + h, x0:x0 + w]


def pairwise_loss(logits: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor,
                  threshold: float = 0.3, theta: float = 2.0, dilation: int = 2) -> torch.Tensor:
    """[B] mean −log P(same label) over neighbour pairs inside the box whose colour similarity
    exp(−‖Δlab‖/θ) ≥ threshold. P(same) = p_i p_j + (1 − p_i)(1 − p_j), in log space."""
    lab = rgb_to_lab(images)
    inside = box_mask.float()
    ones = torch.ones_like(inside)
    log_fg, log_bg = F.logsigmoid(logits), F.logsigmoid(-logits)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    count = torch.zeros_like(total)
    for dy, dx in OFFSETS:
        dy, dx = dy * dilation, dx * dilation
        sim = torch.exp(-(lab - _shift(lab, dy, dx)).norm(dim=1, keepdim=True) / theta)
        edge = (sim >= threshold).float() * inside * _shift(ones, dy, dx)
        log_same = torch.logaddexp(log_fg + _shift(log_fg, dy, dx),
                                   log_bg + _shift(log_bg, dy, dx))
        total = total + (-log_same * edge).flatten(1).sum(1)
        count = count + edge.flatten(1).sum(1)
    return total / count.clamp(min=1.0)


class BoxLoss:
    """projection_weight·projection + pairwise_weight·ramp·pairwise, per image."""

    def __init__(self, projection_weight: float = 1.0, pairwise_weight: float = 1.0,
                 threshold: float = 0.3):
        self.projection_weight = projection_weight
        self.pairwise_weight = pairwise_weight
        self.threshold = threshold

    def __call__(self, logits: torch.Tensor, box_mask: torch.Tensor, images: torch.Tensor,
                 pairwise_ramp: float = 1.0) -> torch.Tensor:
        loss = self.projection_weight * projection_loss(torch.sigmoid(logits), box_mask)
        if self.pairwise_weight and pairwise_ramp > 0:
            loss = loss + self.pairwise_weight * pairwise_ramp * pairwise_loss(
                logits, images, box_mask, self.threshold)
        return loss
