"""Quality-control signals on cases whose answer is known by construction."""

import numpy as np
import pytest
import torch

from htl_ray.quality import (
    DEFAULT_RISK,
    RISKS,
    SIGNALS,
    entropy,
    quality_signals,
    review_flags,
    tta_disagreement,
    uncertain_share,
)


def test_entropy_is_one_bit_at_one_half_and_zero_when_certain():
    probs = torch.stack([torch.full((1, 4, 4), 0.5), torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    assert entropy(probs).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    # half the pixels at p = 0.5, half certain: half a bit on average
    mixed = torch.zeros(1, 1, 4, 4)
    mixed[..., :2] = 0.5
    assert entropy(mixed).item() == pytest.approx(0.5, abs=1e-9)


def test_uncertain_share_counts_the_band_against_the_predicted_area():
    probs = torch.zeros(3, 1, 10, 10)
    probs[0, 0, :4] = 0.9            # 40 lesion pixels, none uncertain
    probs[1, 0, :4] = 0.9
    probs[1, 0, 4:5] = 0.5           # + 10 uncertain pixels, not lesion (p > 0.5 is): a = 40
    probs[2, 0, 0, :3] = 0.3         # 3 uncertain pixels, nothing predicted
    share = uncertain_share(probs).tolist()
    assert share[0] == 0.0
    assert share[1] == pytest.approx(10 / (10 + 40))
    assert share[2] == pytest.approx(1.0)
    assert uncertain_share(torch.zeros(1, 1, 5, 5)).item() == 0.0    # nothing at all: no risk


def _left_half_model(images: torch.Tensor) -> torch.Tensor:
    """Predicts lesion in the left half of any image, whatever it shows: not equivariant."""
    logits = torch.full((images.shape[0], 1, *images.shape[2:]), -10.0)
    logits[..., : images.shape[3] // 2] = 10.0
    return logits


def _brightness_model(images: torch.Tensor) -> torch.Tensor:
    """Lesion where the image is bright: flip- and rotation-equivariant."""
    return (images.mean(1, keepdim=True) - 0.5) * 20


def test_tta_disagreement_is_zero_for_an_equivariant_model_and_known_otherwise():
    images = torch.rand(2, 3, 8, 8)
    probs = torch.sigmoid(_brightness_model(images))
    assert tta_disagreement(_brightness_model, images, probs).tolist() == [0.0, 0.0]
    probs = torch.sigmoid(_left_half_model(images))
    # hflip: the left half comes back as the right half, IoU 0 → 1; vflip: unchanged → 0;
    # rot90 (counter-clockwise) and back: the left half becomes the bottom half, IoU 1/3 → 2/3
    for name, expected in (("hflip", 1.0), ("vflip", 0.0), ("rot90", 2 / 3)):
        got = tta_disagreement(_left_half_model, images, probs, transforms=(name,))
        assert got.tolist() == pytest.approx([expected, expected]), name
    assert tta_disagreement(_left_half_model, images, probs).tolist() == pytest.approx(
        [(1 + 0 + 2 / 3) / 3] * 2)


def test_quality_signals_are_in_unit_interval_and_risks_average_their_signals():
    images = torch.rand(4, 3, 16, 16)
    signals = quality_signals(_left_half_model, images)
    assert set(signals) == {"tta", "entropy", "uncertain"}
    for v in signals.values():
        assert v.shape == (4,) and ((v >= 0) & (v <= 1)).all()
    signals["h"] = np.array([0.2, 0.4, 0.6, 0.8])
    assert RISKS["tta+h"].of(signals) == pytest.approx((signals["tta"] + signals["h"]) / 2)
    assert RISKS["h"].needs_pruning and not RISKS["tta"].needs_pruning
    assert DEFAULT_RISK in RISKS
    assert {s for r in RISKS.values() for s in r.signals} == set(SIGNALS)


def test_review_flags_a_degenerate_mask_whatever_its_risk():
    review, reason = review_flags(np.array([0.5, 0.0, 0.0, 0.01]),
                                  np.array([0.3, 0.0, 1.0, 0.2]), threshold=0.1)
    assert review.tolist() == [True, True, True, False]
    assert reason.tolist() == ["risk", "empty mask", "mask covers the whole image", ""]
    for name, risk in RISKS.items():                 # each risk has its own threshold
        assert 0 < risk.review_threshold < 1, name
