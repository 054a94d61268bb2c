"""Segmentation model factory: one smp model with a single-logit head.

Models start from `encoder_weights=None` unless the user names weights, so nothing is fetched
from a hub at run time.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from htl_ray.config import ModelConfig


def create_model(cfg: ModelConfig) -> torch.nn.Module:
    """smp.create_model(arch, encoder, weights, in_channels, classes=1) with a clear error."""
    extra = {}
    if cfg.decoder_channels:
        extra["decoder_channels"] = tuple(cfg.decoder_channels)
    try:
        return smp.create_model(
            arch=cfg.arch,
            encoder_name=cfg.encoder,
            encoder_weights=cfg.encoder_weights,
            in_channels=cfg.in_channels,
            classes=1,
            **extra,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"model.arch={cfg.arch!r} / model.encoder={cfg.encoder!r}: {exc}") from exc


def state_checksum(model: torch.nn.Module) -> float:
    """Cheap fingerprint of the weights (sum of |w|), logged to show ranks hold identical models."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.state_dict().values()
                         if torch.is_floating_point(p)))
