"""Label-free quality-control signals: how likely a predicted mask is a failed segmentation.

Every signal is a per-image score in [0, 1], higher = riskier, computed from the model alone:

- `tta`: test-time-augmentation disagreement, the mean over a horizontal flip, a vertical flip
  and a 90° rotation of 1 − IoU(prediction, un-transformed prediction of the transformed
  input). A model that segments an image for a reason segments its mirror image the same way.
- `entropy`: mean binary predictive entropy over pixels, in bits (0: every pixel certain).
- `uncertain`: uncertain pixels (0.2 < p < 0.8) relative to the predicted lesion area, as
  u / (u + area) so that it stays in [0, 1] (a monotone map of u / area: the same ranking).
- `h`: the pruned-copy disagreement of HTL scoring (htl_ray.htl.scoring), needs pruned copies.
- combinations: the mean of two signals (no weights to fit, so they carry to any model).

`RISKS` is the registry of what `htl-ray predict --risk` and `htl-ray score` accept, each with
the review threshold chosen for it on a validation split (Youden's J); the shipped default was
chosen on that split too. The measured comparison is docs/quality_control.md
(bench/failure_detection.py). A prediction with no lesion pixel at all (or only lesion) is
flagged for review whatever its risk: every signal is low on a confidently empty mask, yet a
dermoscopic image is taken of a lesion.

torch is imported where the signals are computed, not here: the command line reads the
registry to build its options, and `htl-ray --help` should not wait for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

UNCERTAIN_BAND = (0.2, 0.8)

# (transform, its inverse) on [B, C, H, W]; the rotation needs square inputs (the model's)
TTA_TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                Callable[[torch.Tensor], torch.Tensor]]] = {
    "hflip": (lambda x: x.flip(3), lambda x: x.flip(3)),
    "vflip": (lambda x: x.flip(2), lambda x: x.flip(2)),
    "rot90": (lambda x: x.rot90(1, (2, 3)), lambda x: x.rot90(-1, (2, 3))),
}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy (bits) over the pixels of each image of [B, 1, H, W] probabilities."""
    p = probs.double().clamp(1e-12, 1 - 1e-12)      # a torch tensor: torch is loaded
    e = -(p * p.log2() + (1 - p) * (1 - p).log2())
    return e.reshape(e.shape[0], -1).mean(1)


def uncertain_share(probs: torch.Tensor, band: tuple[float, float] = UNCERTAIN_BAND
                    ) -> torch.Tensor:
    """u / (u + a): u uncertain pixels (band[0] < p < band[1]), a predicted lesion pixels
    (p > 0.5); 0 when both are 0 (nothing predicted, nothing in doubt)."""
    import torch

    flat = probs.reshape(probs.shape[0], -1)
    u = ((flat > band[0]) & (flat < band[1])).sum(1).double()
    a = (flat > 0.5).sum(1).double()
    return torch.where(u + a > 0, u / (u + a).clamp(min=1), torch.zeros_like(u))


def tta_disagreement(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     probs: torch.Tensor, *, transforms: tuple[str, ...] = tuple(TTA_TRANSFORMS)
                     ) -> torch.Tensor:
    """Mean over `transforms` of 1 − IoU(mask of `probs`, inverse(mask of model(T(images))))."""
    import torch

    from htl_ray.metrics import mask_iou

    mask = probs > 0.5
    parts = []
    for name in transforms:
        forward, inverse = TTA_TRANSFORMS[name]
        flipped = torch.sigmoid(model(forward(images)).float()) > 0.5
        parts.append(1.0 - mask_iou(mask, inverse(flipped)))
    return torch.stack(parts).mean(0)


@dataclass(frozen=True)
class Risk:
    """A quality-control risk: the signals it combines (their mean), what it needs, and the
    review threshold chosen for it on a validation split."""

    signals: tuple[str, ...]
    description: str
    review_threshold: float

    @property
    def needs_pruning(self) -> bool:
        return "h" in self.signals

    @property
    def needs_tta(self) -> bool:
        return "tta" in self.signals

    def of(self, signals) -> np.ndarray:
        return np.mean([np.asarray(signals[s], dtype=np.float64) for s in self.signals], axis=0)


# review thresholds: Youden's J on the validation split of bench/failure_detection.py
# (docs/quality_control.md), one per risk, since their scales differ
RISKS: dict[str, Risk] = {
    "h": Risk(("h",), "pruned-copy disagreement (HTL score)", 0.248),
    "tta": Risk(("tta",), "test-time-augmentation disagreement (flips, 90° rotation)", 0.129),
    "entropy": Risk(("entropy",), "mean predictive entropy", 0.199),
    "uncertain": Risk(("uncertain",), "uncertain pixels relative to the predicted area", 0.264),
    "tta+uncertain": Risk(("tta", "uncertain"), "mean of tta and uncertain", 0.163),
    "tta+h": Risk(("tta", "h"), "mean of tta and h", 0.157),
    "tta+entropy": Risk(("tta", "entropy"), "mean of tta and entropy", 0.216),
}
SIGNALS = ("h", "tta", "entropy", "uncertain")
DEFAULT_RISK = "tta"                   # chosen on the same validation split (the page says how)
REVIEW_THRESHOLD = RISKS[DEFAULT_RISK].review_threshold


def review_flags(risk: np.ndarray, area_fraction: np.ndarray, threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(review, reason) per image: the risk at or above `threshold`, or a degenerate mask
    (no lesion pixel, or nothing but lesion) whatever the risk."""
    risk, area = np.asarray(risk, dtype=np.float64), np.asarray(area_fraction, dtype=np.float64)
    empty, full = area <= 0.0, area >= 1.0
    high = risk >= threshold
    reason = np.where(empty, "empty mask", np.where(full, "mask covers the whole image",
                                                    np.where(high, "risk", "")))
    return high | empty | full, reason.astype(object)


def quality_signals(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    logits: torch.Tensor | None = None, *, tta: bool = True
                    ) -> dict[str, np.ndarray]:
    """tta (when asked), entropy and uncertain of a batch, from the model's logits (computed
    here when not given). h comes from the pruned copies (htl_ray.htl.scoring)."""
    import torch

    with torch.inference_mode():
        return _signals(model, images, logits, tta)


def _signals(model, images, logits, tta: bool) -> dict[str, np.ndarray]:
    import torch

    if logits is None:
        logits = model(images)
    probs = torch.sigmoid(logits.float())
    out = {"entropy": entropy(probs), "uncertain": uncertain_share(probs)}
    if tta:
        out["tta"] = tta_disagreement(model, images, probs)
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}
