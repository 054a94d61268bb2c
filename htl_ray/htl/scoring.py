"""HTL scores for localisation (docs/method.md §Scoring): disagreement between a dense
snapshot and its pruned copies, per sample, in [0, 1].

For a sample x with dense prediction ŷ_d and pruned predictions ŷ_s (masks at p > 0.5):

- d_s(x) = 1 − IoU(ŷ_d, ŷ_s)   (two empty masks agree: IoU 1, d 0)
- h(x)   = mean_s d_s(x)
- GT-aware term, where a label y exists: g(x) = mean_s max(0, IoU(ŷ_d, y) − IoU(ŷ_s, y))
  (how much accuracy pruning costs on x); the GT-aware score is h + g, clipped to [0, 1].

The same forward passes also give the comparators' scores at no extra cost: the dense model's
per-sample loss and EL2N (mean ‖p − y‖₂ over pixels). In the semi-supervised setting most
images have no y: there the target is the dense model's own mask (a pseudo-label), so loss and
EL2N measure how unsure the model is of the image; labeled images keep their label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from htl_ray.losses import BceDiceLoss
from htl_ray.metrics import mask_iou
from htl_ray.supervision.settings import LABELED


def binarize(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) > 0.5


def disagreement(dense_mask: torch.Tensor, pruned_mask: torch.Tensor) -> torch.Tensor:
    """d_s = 1 − IoU(dense, pruned) per sample."""
    return 1.0 - mask_iou(dense_mask, pruned_mask)


def gt_gap(dense_mask: torch.Tensor, pruned_mask: torch.Tensor,
           target: torch.Tensor) -> torch.Tensor:
    """max(0, IoU(dense, y) − IoU(pruned, y)) per sample."""
    return (mask_iou(dense_mask, target) - mask_iou(pruned_mask, target)).clamp(min=0)


def _between(flags: torch.Tensor, dim: int) -> torch.Tensor:
    """True from the first to the last True entry along `dim` (inclusive)."""
    f = flags.int()
    return (f.cumsum(dim) > 0) & (f.flip(dim).cumsum(dim).flip(dim) > 0)


def box_of(masks: torch.Tensor) -> torch.Tensor:
    """Each boolean mask [B,1,H,W] → its filled tight bounding box (empty stays empty)."""
    rows = _between(masks.any(dim=3, keepdim=True), 2)        # [B,1,H,1]
    cols = _between(masks.any(dim=2, keepdim=True), 3)        # [B,1,1,W]
    return rows & cols


def el2n(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean over pixels of |p − y| (the L2 norm of a one-logit error vector)."""
    err = (torch.sigmoid(logits) - target.float()).abs()
    return err.reshape(err.shape[0], -1).mean(1)


def score_batch(dense: torch.nn.Module, pruned: dict[float, torch.nn.Module],
                images: torch.Tensor, masks: torch.Tensor | None = None,
                label_kind: str = "mask") -> dict[str, np.ndarray]:
    """One dense forward pass and one per pruned model; per-sample scalars only."""
    return score_population_batch([(dense, pruned)], images, masks, label_kind)


@torch.inference_mode()
def score_population_batch(population: list[tuple[torch.nn.Module, dict[float, torch.nn.Module]]],
                           images: torch.Tensor,
                           masks: torch.Tensor | None = None,
                           label_kind: str = "mask",
                           labeled: torch.Tensor | None = None,
                           extra: Callable[[torch.nn.Module, torch.Tensor],
                                           dict[str, np.ndarray]] | None = None
                           ) -> dict[str, np.ndarray]:
    """PIE over a population of the last M snapshots (Hooker et al.): per sparsity, compare the
    per-pixel majority mask of the M dense models with that of the M pruned models. The
    majority of one mask is that mask, so M = 1 is the plain dense-vs-pruned score. Loss and
    EL2N come from the newest dense model. With `label_kind="box"` (weak supervision) the labels
    are boxes and the GT-aware term compares the predictions' bounding boxes with them (box
    IoU). With `labeled` ([B] bool, semi-supervised) only those rows of `masks` are labels:
    loss and EL2N score the others against the newest dense model's own mask, and there is no
    GT-aware term. `extra(newest dense model, its logits)` adds more per-sample columns from
    the same forward pass (the quality-control signals a method ranks by)."""
    as_label = box_of if label_kind == "box" else (lambda m: m)
    dense_logits = [dense(images) for dense, _ in population]
    dense_major = majority_mask([binarize(lg) for lg in dense_logits])
    target = masks > 0.5 if masks is not None and labeled is None else None
    out: dict[str, torch.Tensor] = {}
    d_cols, g_cols = [], []
    for s in sorted(population[-1][1]):
        pruned_major = majority_mask([binarize(pruned[s](images)) for _, pruned in population])
        d = disagreement(dense_major, pruned_major)
        out[sparsity_column(s)] = d
        d_cols.append(d)
        if target is not None:
            g_cols.append(gt_gap(as_label(dense_major), as_label(pruned_major), target))
    h = torch.stack(d_cols).mean(0)
    out["h"] = h
    if target is not None:
        g = torch.stack(g_cols).mean(0)
        out["gt_gap"] = g
        out["h_gt"] = (h + g).clamp(max=1.0)
        out["loss"] = BceDiceLoss()(dense_logits[-1], masks)
        out["el2n"] = el2n(dense_logits[-1], masks)
        out["dense_iou"] = mask_iou(binarize(dense_logits[-1]), target)
    elif masks is not None and labeled is not None:
        newest = dense_logits[-1]
        rows = labeled.to(device=newest.device, dtype=torch.bool).view(-1, 1, 1, 1)
        pseudo = torch.where(rows, masks > 0.5, binarize(newest)).to(masks.dtype)
        out["loss"] = BceDiceLoss()(newest, pseudo)
        out["el2n"] = el2n(newest, pseudo)
        out[LABELED] = rows.view(-1)           # two scales: the attention ranks within each
    arrays = {k: v.double().cpu().numpy() for k, v in out.items()}
    if extra is not None:
        arrays.update(extra(population[-1][0], dense_logits[-1]))
    return arrays


def sparsity_column(s: float) -> str:
    return f"d_{s:.2f}"


def ema(previous: np.ndarray | None, new: np.ndarray, beta: float) -> np.ndarray:
    """h_t = β·h_{t−1} + (1−β)·h_new (the first refresh has no history: h_t = h_new)."""
    if previous is None:
        return np.asarray(new, dtype=np.float64)
    return beta * np.asarray(previous, dtype=np.float64) + (1 - beta) * np.asarray(new)


def select_htl(scores: np.ndarray, *, q: float | None = 0.2, tau: float | None = None,
               seed: int = 0) -> np.ndarray:
    """Boolean HTL set: h ≥ τ when τ is given, else the top-q fraction by h (ties broken by a
    seeded random order so the set has exactly round(q·N) members)."""
    scores = np.asarray(scores, dtype=np.float64)
    if tau is not None:
        return scores >= tau
    if q is None or not 0 < q <= 1:
        raise ValueError(f"q={q}: expected a fraction in (0, 1]")
    k = int(round(q * len(scores)))
    tiebreak = np.random.default_rng(seed).random(len(scores))
    order = np.lexsort((tiebreak, -scores))
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[order[:k]] = True
    return chosen


def majority_mask(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-pixel majority vote of a population of boolean masks (ties count as foreground)."""
    stack = torch.stack([m.float() for m in masks])
    return stack.mean(0) >= 0.5


def pie_disagreement(dense_population: Sequence[torch.Tensor],
                     pruned_population: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hooker's PIE criterion for localisation: 1 − IoU between the majority mask of the dense
    population (last M snapshots) and that of the pruned population."""
    return disagreement(majority_mask(dense_population), majority_mask(pruned_population))
