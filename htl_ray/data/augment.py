"""Batch augmentation on tensors inside the training worker: flips, 90° rotations, colour jitter.

Done on the batch (not per row in Ray Data tasks) so that training workers do not compete with
data tasks for the CPUs they reserved, and so that a seeded generator makes it reproducible.
"""

from __future__ import annotations

import torch

from htl_ray.config import AugmentConfig


def augment_batch(images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images: [B,3,H,W] float in [0,1]; masks: [B,1,H,W]. Geometry is applied to both.

    The batch may be on any device; `generator` is a CPU generator, so a seed gives the same
    flips, rotations and factors wherever the batch is augmented."""
    b = images.shape[0]
    out_i, out_m = images.clone(), masks.clone()

    def coin(p: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) < p

    for flag, dim in ((coin(cfg.hflip), 3), (coin(cfg.vflip), 2)):
        idx = flag.nonzero().flatten()
        if len(idx):
            out_i[idx] = out_i[idx].flip(dim)
            out_m[idx] = out_m[idx].flip(dim)
    if images.shape[2] == images.shape[3]:
        rot = coin(cfg.rotate90)
        ks = torch.randint(1, 4, (b,), generator=generator)
        for k in (1, 2, 3):           # one op per angle, not per image (less time in Python)
            idx = (rot & (ks == k)).nonzero().flatten()
            if len(idx):
                out_i[idx] = torch.rot90(out_i[idx], k, (2, 3))
                out_m[idx] = torch.rot90(out_m[idx], k, (2, 3))

    def factor(amount: float) -> torch.Tensor:
        # drawn on the CPU generator (the same draws on any device), applied where the batch is
        return (1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * amount).to(
            images.device)

    if cfg.brightness:
        out_i = out_i * factor(cfg.brightness)
    if cfg.contrast:
        mean = out_i.mean(dim=(1, 2, 3), keepdim=True)
        out_i = (out_i - mean) * factor(cfg.contrast) + mean
    if cfg.saturation:
        grey = out_i.mean(dim=1, keepdim=True)
        out_i = (out_i - grey) * factor(cfg.saturation) + grey
    return out_i.clamp(0, 1), out_m
