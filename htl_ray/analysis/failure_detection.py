"""How well a label-free risk predicts failed segmentations: AUROC, AURC, bootstrap CIs.

- AUROC of the risk for "failed" (IoU < 0.65, the ISIC threshold): the chance that a failed
  image gets a higher risk than a good one (0.5: no better than chance).
- AURC, the area under the risk–coverage curve (Geifman & El-Yaniv; the measure of the
  failure-detection benchmark for medical segmentation, Zenk et al. 2024): images are accepted
  in order of increasing risk; at coverage k/n the selective risk is the mean loss (1 − IoU)
  of the k accepted images; AURC is its mean over coverages, lower is better. Tied risks are
  accepted together. `optimal_aurc` (accepting by the true loss) and the random ranking's
  (the mean loss) bracket it.

Intervals are percentile bootstrap 95% intervals over images, the images resampled jointly for
every signal (seeded).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from htl_ray.metrics import ISIC_JACCARD_THRESHOLD, auroc


def aurc(risk: np.ndarray, loss: np.ndarray) -> float:
    """Area under the risk–coverage curve of accepting images by increasing `risk`."""
    risk, loss = np.asarray(risk, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    n = len(risk)
    if n == 0:
        return float("nan")
    order = np.argsort(risk, kind="stable")
    r, cum = risk[order], np.cumsum(loss[order])
    ends = np.flatnonzero(np.append(r[1:] != r[:-1], True))   # last index of each tie group
    sizes = np.diff(np.append(-1, ends))
    return float(np.sum(cum[ends] / (ends + 1) * sizes) / n)


def optimal_aurc(loss: np.ndarray) -> float:
    """The AURC of a risk that orders images exactly by their loss (the floor)."""
    return aurc(np.asarray(loss, dtype=np.float64), loss)


def bootstrap_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [50 - level * 50, 50 + level * 50])
    return float(lo), float(hi)


def compare_risks(risks: Mapping[str, np.ndarray], iou: np.ndarray, *, n_boot: int = 2000,
                  seed: int = 0, threshold: float = ISIC_JACCARD_THRESHOLD) -> pd.DataFrame:
    """One row per risk: AUROC and AURC for failure (IoU < `threshold`, loss 1 − IoU) on the
    same images, with bootstrap 95% CIs (the same resamples for every risk); `attrs` hold the
    image and failure counts and the optimal and random AURC."""
    iou = np.asarray(iou, dtype=np.float64)
    failed, loss = iou < threshold, 1.0 - iou
    idx = np.random.default_rng(seed).integers(0, len(iou), (n_boot, len(iou)))
    rows = []
    for name, risk in risks.items():
        risk = np.asarray(risk, dtype=np.float64)
        boot_auc = np.array([auroc(risk[i], failed[i]) for i in idx])
        boot_aurc = np.array([aurc(risk[i], loss[i]) for i in idx])
        rows.append({"risk": name, "auroc": auroc(risk, failed),
                     **dict(zip(("auroc_lo", "auroc_hi"), bootstrap_ci(boot_auc), strict=True)),
                     "aurc": aurc(risk, loss),
                     **dict(zip(("aurc_lo", "aurc_hi"), bootstrap_ci(boot_aurc), strict=True))})
    table = pd.DataFrame(rows)
    table.attrs.update({"images": len(iou), "failed": int(failed.sum()),
                        "optimal_aurc": optimal_aurc(loss), "random_aurc": float(loss.mean())})
    return table


def youden_threshold(risk: np.ndarray, failed: np.ndarray) -> float:
    """The risk threshold (flag when risk >= it) that maximises sensitivity + specificity − 1
    for failure; ties: the higher threshold (fewer images flagged)."""
    risk, failed = np.asarray(risk, dtype=np.float64), np.asarray(failed, dtype=bool)
    if failed.all() or not failed.any():
        raise ValueError("a threshold needs both failed and good images")
    best, best_j = float("inf"), -np.inf
    for t in np.unique(risk):
        flagged = risk >= t
        j = flagged[failed].mean() + (~flagged[~failed]).mean() - 1
        if j >= best_j:
            best, best_j = float(t), j
    return best


def flag_rates(risk: np.ndarray, failed: np.ndarray, threshold: float) -> dict[str, float]:
    """What a review threshold does: the share flagged, and of failures caught (sensitivity)
    and of good images left alone (specificity)."""
    risk, failed = np.asarray(risk, dtype=np.float64), np.asarray(failed, dtype=bool)
    flagged = risk >= threshold
    return {"flagged": float(flagged.mean()),
            "sensitivity": float(flagged[failed].mean()) if failed.any() else float("nan"),
            "specificity": float((~flagged[~failed]).mean()) if (~failed).any()
            else float("nan")}


def auroc_difference(risk_a: np.ndarray, risk_b: np.ndarray, failed: np.ndarray, *,
                     n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC(a) − AUROC(b) on the same images, with a paired bootstrap 95% interval (both
    risks scored on each resample): does a detect failures better than b?"""
    a, b = np.asarray(risk_a, dtype=np.float64), np.asarray(risk_b, dtype=np.float64)
    failed = np.asarray(failed, dtype=bool)
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    diffs = np.array([auroc(a[i], failed[i]) - auroc(b[i], failed[i]) for i in idx])
    return (auroc(a, failed) - auroc(b, failed), *bootstrap_ci(diffs))
