"""Which training images keep their labels, and what those labels are (masks or boxes).

Semi-supervised runs keep the mask of a fraction f of the training images; the choice is
stratified by lesion-size quartile (so the labeled subset is not, by chance, all large lesions),
exact (round(f·N) images, apportioned across strata by largest remainder) and a pure function
of the seed, so the supervised baseline on "the same 25%" sees exactly the same images.
Weakly-supervised runs replace every mask by its bounding box, optionally jittered the way a
hurried annotator draws boxes.
"""

from __future__ import annotations

import numpy as np


def size_strata(area_fraction: np.ndarray, bins: int = 4) -> np.ndarray:
    """Quantile bin (0..bins-1) of each lesion's area fraction."""
    a = np.asarray(area_fraction, dtype=np.float64)
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, a, side="right")


def choose_labeled(ids: np.ndarray, strata: np.ndarray, fraction: float,
                   seed: int) -> np.ndarray:
    """Boolean mask over `ids`: exactly round(fraction·N) True, stratified, seed-determined.

    The draw depends on the ids (sorted), not on the row order in which they arrive."""
    ids = np.asarray(ids).astype(str)
    strata = np.asarray(strata)
    n = len(ids)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    total = int(round(fraction * n))
    order = np.argsort(ids, kind="stable")
    rng = np.random.default_rng(seed)
    groups = {g: order[strata[order] == g] for g in np.unique(strata)}
    quota = {g: fraction * len(rows) for g, rows in groups.items()}
    take = {g: int(np.floor(q)) for g, q in quota.items()}
    # largest remainder, ties broken by a seeded draw, so the total is exact
    left = total - sum(take.values())
    keys = sorted(groups, key=lambda g: (-(quota[g] - take[g]), rng.random()))
    for g in keys[:left]:
        take[g] += 1
    labeled = np.zeros(n, dtype=bool)
    for g, rows in groups.items():
        labeled[rng.permutation(rows)[:take[g]]] = True
    return labeled


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """[B,H,W] masks → [B,4] boxes (x0, y0, x1, y1), half-open pixel bounds; an empty mask
    gives the empty box (0, 0, 0, 0)."""
    masks = np.asarray(masks) > 0
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def jitter_boxes(boxes: np.ndarray, sigma: float, height: int, width: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Move each corner by N(0, σ·box size) pixels, clipped to the image; boxes stay ≥ 1 px."""
    boxes = np.asarray(boxes, dtype=np.float64).copy()
    if sigma <= 0:
        return boxes
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    moved = boxes + rng.normal(0.0, 1.0, boxes.shape) * sigma * size
    moved = np.round(moved)
    x0 = np.minimum(moved[:, 0], moved[:, 2]).clip(0, width - 1)
    y0 = np.minimum(moved[:, 1], moved[:, 3]).clip(0, height - 1)
    x1 = np.maximum(np.maximum(moved[:, 0], moved[:, 2]), x0 + 1).clip(max=width)
    y1 = np.maximum(np.maximum(moved[:, 1], moved[:, 3]), y0 + 1).clip(max=height)
    out = np.stack([x0, y0, x1, y1], axis=1)
    out[size[:, 0] <= 0] = 0                      # an empty mask stays without a box
    return out


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """[B,4] boxes → [B,H,W] uint8 masks (1 inside the box, as stored masks are 0/1)."""
    out = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[i, y0:y1, x0:x1] = 1
    return out
