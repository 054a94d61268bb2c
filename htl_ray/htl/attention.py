"""From a score table to per-sample weights: the HTL method and its comparators share this path.

A *method* says which score ranks the samples (registry `METHODS`):

| method | score                                    |
|--------|------------------------------------------|
| erm    | none: every weight is 1                  |
| focal  | none: every weight is 1 (the loss changes)|
| htl    | pruning disagreement h (EMA'd; + GT term if `gt_aware`) |
| random | seeded uniform noise: the placebo, same λ and q |
| loss   | the dense model's per-sample loss (JTT / OHEM style) |
| el2n   | the dense model's per-sample EL2N        |
| tta    | test-time-augmentation disagreement of the dense model (flips, 90° rotation) |
| entropy| the dense model's mean predictive entropy |

tta and entropy are the quality-control signals of `htl_ray.quality`, label-free like h: the
scorer actors compute them beside h from the same snapshot, so each asks whether a simpler
uncertainty estimate than pruning finds the images worth attending. Like loss and EL2N they
are not smoothed across refreshes (the EMA is part of the HTL score's definition).

(loss and EL2N in the semi setting: against the label where an image has one, else against the
model's own mask — a pseudo-label, so the score is the model's uncertainty on that image. The
two are on different scales, so they are ranked within each group: `within_group_rank`.)

Weights: the top-q fraction (or score ≥ τ) is the attended set; hard weights are
`1 + λ·1[selected]`, soft weights `1 + λ·score/mean(score)`; both are renormalised to mean 1,
so the loss scale is that of ERM. λ > 0 up-weights the attended set; λ in (−1, 0) down-weights
it (hard weighting only: the hardest samples may be the mislabeled or ambiguous ones), still
renormalised to mean 1, so the others gain what the attended set loses. An *attention*
strategy (registry `ATTENTION`) turns the weights into a loss weight and a sampling rate
(`both`: √w each, so that their product is w; each alone has a mean a little below 1 — by
Jensen — so an epoch is a little shorter and its loss a little smaller than ERM's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from htl_ray.htl.scoring import select_htl
from htl_ray.supervision.settings import LABELED


@dataclass(frozen=True)
class Method:
    name: str
    score_column: str | None          # None: no attention
    needs_labels: bool = False
    # quality-control signals (htl_ray.quality) the scorer must compute beside h
    signals: tuple[str, ...] = ()


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("erm", None),
    Method("focal", None),
    Method("htl", "h"),
    Method("random", "random"),
    Method("loss", "loss", needs_labels=True),
    Method("el2n", "el2n", needs_labels=True),
    Method("tta", "tta", signals=("tta",)),
    Method("entropy", "entropy", signals=("entropy",)),
)}


def method_scores(table: pd.DataFrame, method: str, *, seed: int, version: int,
                  gt_aware: bool = False) -> np.ndarray | None:
    """The score that ranks samples for `method` (None for erm / focal)."""
    m = METHODS[method]
    if m.score_column is None:
        return None
    if m.score_column == "random":
        # A fresh draw per refresh, reproducible from (seed, version).
        return np.random.default_rng([seed, version]).random(len(table))
    column = "h_gt" if (method == "htl" and gt_aware and "h_gt" in table) else m.score_column
    if column not in table:
        raise KeyError(f"score table has no column {column!r} (method {method})")
    scores = table[column].to_numpy(dtype=np.float64)
    # semi setting: the score table says which rows loss/EL2N scored against a label
    if m.needs_labels and LABELED in table:
        return within_group_rank(scores, table[LABELED].to_numpy())
    return scores


def within_group_rank(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each score's percentile rank in (0, 1] among the scores of its group. Semi-supervised
    loss and EL2N measure labeled images against their labels and the others against
    pseudo-labels: two scales (a Mean Teacher on ISIC at 128 px: median loss 0.23 on its
    labeled images, 0.14 on the others; 58% of the top 10% labeled, 25% overall), so ranked
    together the top-q set would favour the labeled images for being labeled. Ranked within
    each group, it takes about the fraction q of each."""
    return (pd.Series(np.asarray(scores, dtype=np.float64))
            .groupby(np.asarray(groups)).rank(pct=True).to_numpy())


def _hard(scores: np.ndarray, selected: np.ndarray, lam: float) -> np.ndarray:
    return 1.0 + lam * selected.astype(np.float64)


def _soft(scores: np.ndarray, selected: np.ndarray, lam: float) -> np.ndarray:
    mean = scores.mean()
    return 1.0 + lam * (scores / mean if mean > 0 else np.zeros_like(scores))


# htl.weighting: (scores, selected, λ) → weights before renormalisation
WEIGHTINGS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "hard": _hard,       # 1 + λ·1[selected]
    "soft": _soft,       # 1 + λ·score/mean(score)
}


def attention_weights(scores: np.ndarray | None, *, lam: float, q: float | None = 0.2,
                      tau: float | None = None, weighting: str = "hard",
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights renormalised to mean 1, selected mask)."""
    if scores is None:
        return np.ones(0), np.zeros(0, dtype=bool)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"htl.weighting={weighting!r}: expected one of {sorted(WEIGHTINGS)}")
    if not lam > -1 or (lam < 0 and weighting != "hard"):
        raise ValueError(f"htl.lam={lam}: expected λ > −1 (λ < 0 with hard weighting only)")
    scores = np.asarray(scores, dtype=np.float64)
    selected = select_htl(scores, q=q, tau=tau, seed=seed)
    w = WEIGHTINGS[weighting](scores, selected, lam)
    return w / w.mean(), selected


def attended_count(weights: np.ndarray, *, lam: float) -> int:
    """How many of a batch's renormalised weights belong to the attended set: above 1 when
    it is up-weighted (λ > 0), below 1 when it is down-weighted (λ < 0); none at λ = 0."""
    w = np.asarray(weights, dtype=np.float64)
    if lam == 0:
        return 0
    return int((w > 1.0).sum() if lam > 0 else (w < 1.0).sum())


@dataclass(frozen=True)
class Attention:
    """How a weight w acts on a batch: on the loss (reweight), on how often a sample is drawn
    (oversample), or both (√w each, so that the expected emphasis is still w)."""

    name: str
    split: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]   # w → (w_loss, w_sample)
    resamples: bool                                                # w_sample is not all ones

    def batch(self, w: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the batch to train on — repeated or dropped when it resamples —, the loss
        weight of each). Never empty: every DDP rank must step once per batch, so a batch
        whose draw came out empty trains its first row with weight 0."""
        w_loss, w_sample = self.split(w)
        rows = np.repeat(np.arange(len(w)), oversample_counts(w_sample, rng)) \
            if self.resamples else np.arange(len(w))
        if len(rows) == 0:
            return np.array([0]), np.zeros(1)
        return rows, w_loss[rows]


def _both(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(w)
    return root, root


ATTENTION: dict[str, Attention] = {a.name: a for a in (
    Attention("reweight", lambda w: (w, np.ones_like(w)), resamples=False),
    Attention("oversample", lambda w: (np.ones_like(w), w), resamples=True),
    Attention("both", _both, resamples=True),
)}


def oversample_counts(rates: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """How many copies of each sample to train on: ⌊r⌋ + Bernoulli(r − ⌊r⌋), so the expected
    count is r (mean 1: the epoch keeps its expected length)."""
    rates = np.asarray(rates, dtype=np.float64)
    base = np.floor(rates)
    return (base + (generator.random(len(rates)) < rates - base)).astype(np.int64)
