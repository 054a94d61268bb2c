"""Per-image segmentation metrics on binarised masks, as the ISIC 2018 challenge scores them.

The official Task 1 score binarises 0–255 masks at >128, computes the Jaccard index per image,
sets it to 0 below 0.65 ("thresholded Jaccard") and averages over images. We compute every
metric per image and leave aggregation (mean over images, per group) to the caller, so that the
same per-image table feeds validation, HTL analysis and group reports.

Empty-vs-empty convention: when both the prediction and the ground truth are empty, Dice and IoU
are 1 (perfect agreement: nothing to find, nothing found). The same vacuous-truth rule applies to
sensitivity when the ground truth has no positive pixel and to specificity when it has no negative
pixel. This matches docs/method.md §Scoring (IoU of two empty masks is 1, so HTL disagreement is 0).
"""

from __future__ import annotations

import numpy as np
import torch

ISIC_JACCARD_THRESHOLD = 0.65
METRIC_NAMES = ("dice", "iou", "thresholded_jaccard", "sensitivity", "specificity")


def binarize_255(mask: np.ndarray) -> np.ndarray:
    """0–255 mask → bool, with the challenge's rule (>128)."""
    return np.asarray(mask) > 128


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image TP/FP/FN/TN of boolean masks shaped [B, ...]."""
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    tp = (p & t).sum(1).double()
    fp = (p & ~t).sum(1).double()
    fn = (~p & t).sum(1).double()
    tn = (~p & ~t).sum(1).double()
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den with the empty-denominator case defined as 1 (see module docstring)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))


def per_image_metrics(pred: torch.Tensor | np.ndarray,
                      target: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Dice, IoU, thresholded Jaccard, sensitivity, specificity for each image of a batch.

    `pred` and `target` are boolean (or 0/1) masks of shape [B, H, W] or [B, 1, H, W].
    """
    pred_t = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred)
    target_t = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target)
    c = confusion_counts(pred_t.detach().cpu(), target_t.detach().cpu())
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    out = {
        "dice": dice,
        "iou": iou,
        "thresholded_jaccard": torch.where(iou >= ISIC_JACCARD_THRESHOLD, iou,
                                           torch.zeros_like(iou)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }
    return {k: v.numpy().astype(np.float64) for k, v in out.items()}


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two boolean mask batches (1 when both are empty), as a float tensor."""
    c = confusion_counts(a, b)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"])


def summarize(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Dataset score = mean over images (the challenge's aggregation)."""
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_image.items()}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for boolean `labels` (Mann–Whitney U with average
    ranks for ties); NaN when one class is absent."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
