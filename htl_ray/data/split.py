"""Deterministic train/val/test split that never separates images of one lesion.

Groups (lesion_id, or the image id when a lesion id is missing) are ordered by a seeded hash and
dealt out until each split reaches its share of images, so the result depends only on the ids,
the lesion ids, the fractions and the seed — not on file order or the machine.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from htl_ray.data.schema import SPLITS
from htl_ray.errors import UserError


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise UserError(f"split fractions: expected 3 values (train, val, test), got {fractions}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)}: need all >= 0 and sum 1 "
                         "(0,0,1: a test-only dataset, for external validation)")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def assign_splits(ids: Sequence[str], lesion_ids: Sequence[str | None],
                  fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> list[str]:
    """Return the split name of each id (same order as `ids`)."""
    fr = validate_fractions(fractions)
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, (image_id, lesion) in enumerate(zip(ids, lesion_ids, strict=True)):
        key = f"lesion:{lesion}" if lesion else f"image:{image_id}"
        groups.setdefault(key, []).append(i)

    def order(key: str) -> str:
        return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()

    n = len(ids)
    targets = [round(fr[0] * n), round(fr[1] * n)]
    targets.append(n - targets[0] - targets[1])
    counts = [0, 0, 0]
    out = [""] * n
    for key in sorted(groups, key=order):
        members = groups[key]
        k = next((j for j in range(3) if counts[j] < targets[j]), 0)
        counts[k] += len(members)
        for i in members:
            out[i] = SPLITS[k]
    return out
