"""Statistics over training seeds, as data: a mean with its Student-t 95% interval, the paired
difference of two arms by seed, and the verdict of a difference against a goal.

`htl-ray compare` and the reproduction protocol both read their runs through these; they only
format the results. Pure functions, no MLflow: the arms are given as `(seed, value)` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

GOAL = 0.02          # the paper's claim: ≥ 2 points of thresholded Jaccard (or Dice)


@dataclass(frozen=True)
class MeanCI:
    """Mean of the values and the bounds of its interval: NaN bounds with fewer than two
    values, all NaN with none."""

    mean: float
    low: float
    high: float

    @property
    def has_interval(self) -> bool:
        return self.low == self.low

    def as_tuple(self) -> tuple[float, float, float]:
        return self.mean, self.low, self.high


def mean_ci(values: Iterable[float], *, level: float = 0.95) -> MeanCI:
    """Mean and Student-t interval of `values` (over seeds, or over seed pairs); NaN values
    (a metric a run did not log) are left out."""
    from scipy import stats

    x = np.asarray([v for v in values if v == v], dtype=float)
    if len(x) == 0:
        return MeanCI(math.nan, math.nan, math.nan)
    m = float(x.mean())
    if len(x) < 2:
        return MeanCI(m, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return MeanCI(m, m - half, m + half)


@dataclass(frozen=True)
class PairedDifference:
    """a − b paired by seed: the interval over the pairs, and how many pairs there were."""

    difference: MeanCI
    pairs: int


def seed_pairs(a: Iterable[tuple[Hashable, float]], b: Iterable[tuple[Hashable, float]]
               ) -> list[tuple[Hashable, float, float]]:
    """`(seed, a value, b value)` for every value of `a` with every value of `b` of the same
    seed, in `a`'s order (then `b`'s): seed-to-seed variation common to both arms cancels in
    their difference. A seed run twice in one arm pairs twice."""
    by_seed: dict[Hashable, list[float]] = {}
    for seed, value in b:
        by_seed.setdefault(seed, []).append(value)
    return [(seed, x, y) for seed, x in a for y in by_seed.get(seed, [])]


def paired_difference(a: Iterable[tuple[Hashable, float]], b: Iterable[tuple[Hashable, float]],
                      *, level: float = 0.95) -> PairedDifference:
    """Mean and interval of a − b over the seeds both arms have (`seed_pairs`)."""
    pairs = seed_pairs(a, b)
    return PairedDifference(mean_ci([x - y for _, x, y in pairs], level=level), len(pairs))


class Reading(Enum):
    """What a difference's interval says, read against the goal."""

    MEETS_GOAL = "better, meeting the goal"        # interval above 0, mean ≥ the goal
    BELOW_GOAL = "better, by less than the goal"   # interval above 0, mean below the goal
    LEVEL = "no significant difference"            # the interval includes 0
    WORSE = "significantly worse"                  # interval below 0
    NO_INTERVAL = "one pair: no interval"
    MISSING = "no pair"


@dataclass(frozen=True)
class Verdict:
    """The difference of one method to one baseline on one metric, and its reading."""

    baseline: str
    metric: str
    difference: MeanCI
    goal: float = GOAL

    @property
    def reading(self) -> Reading:
        d = self.difference
        if d.mean != d.mean:
            return Reading.MISSING
        if not d.has_interval:
            return Reading.NO_INTERVAL
        if d.low > 0:
            return Reading.MEETS_GOAL if d.mean >= self.goal else Reading.BELOW_GOAL
        return Reading.WORSE if d.high < 0 else Reading.LEVEL


def goal_met(verdicts: Mapping[tuple[str, str], Verdict], metric: str,
             baselines: Iterable[str]) -> bool:
    """Whether the difference on `metric` meets the goal against *every* one of `baselines`
    (a baseline without a verdict does not)."""
    return all((b, metric) in verdicts and verdicts[(b, metric)].reading is Reading.MEETS_GOAL
               for b in baselines)
