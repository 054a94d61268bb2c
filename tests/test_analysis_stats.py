"""Statistics over seeds as data (`htl_ray.analysis.stats`), as tables with known numbers; no
MLflow, no Ray."""

from __future__ import annotations

import math

import pytest

from htl_ray.analysis.stats import (
    GOAL,
    MeanCI,
    Reading,
    Verdict,
    goal_met,
    mean_ci,
    paired_difference,
    seed_pairs,
)

nan = math.nan
T1 = 12.706204736174698           # Student t, 97.5% quantile, 1 degree of freedom
T2 = 4.302652729911275            # ... 2 degrees of freedom
T2_90 = 2.919985580355516         # 95% quantile, 2 degrees of freedom (a 90% interval)


def _same(a: float, b: float) -> bool:
    return (a != a and b != b) or a == pytest.approx(b)


@pytest.mark.parametrize("values, level, mean, half", [
    ([0.03, 0.04, 0.02], 0.95, 0.03, T2 * 0.01 / math.sqrt(3)),
    ([0.03, 0.04, 0.02], 0.90, 0.03, T2_90 * 0.01 / math.sqrt(3)),
    ([0.5, 0.7], 0.95, 0.6, T1 * math.sqrt(0.02) / math.sqrt(2)),
    ([0.5, nan, 0.7], 0.95, 0.6, T1 * math.sqrt(0.02) / math.sqrt(2)),   # NaN: not a value
    ([0.4, 0.4, 0.4], 0.95, 0.4, 0.0),                                  # no spread
    ([0.5], 0.95, 0.5, nan),                                            # one value: no CI
    ([nan], 0.95, nan, nan),
    ([], 0.95, nan, nan),
])
def test_mean_ci_is_the_student_t_interval(values, level, mean, half):
    ci = mean_ci(values, level=level)
    assert _same(ci.mean, mean)
    assert _same(ci.high - ci.mean, half) and _same(ci.mean - ci.low, half)
    assert ci.has_interval == (half == half)
    assert ci.as_tuple() == (ci.mean, ci.low, ci.high)


@pytest.mark.parametrize("a, b, pairs", [
    # one run per seed: the seeds both arms have, in a's order
    ([("0", 0.8), ("1", 0.9)], [("1", 0.7), ("0", 0.6)], [("0", 0.8, 0.6), ("1", 0.9, 0.7)]),
    ([("2", 0.8), ("0", 0.9)], [("0", 0.7), ("1", 0.6)], [("0", 0.9, 0.7)]),
    # a seed run twice pairs with every run of that seed of the other arm
    ([("0", 0.8), ("0", 0.9)], [("0", 0.5)], [("0", 0.8, 0.5), ("0", 0.9, 0.5)]),
    ([("0", 0.8)], [("0", 0.5), ("0", 0.6)], [("0", 0.8, 0.5), ("0", 0.8, 0.6)]),
    ([("0", 0.8)], [], []),
    ([], [("0", 0.8)], []),
])
def test_seed_pairs(a, b, pairs):
    assert seed_pairs(a, b) == pairs


@pytest.mark.parametrize("a, b, mean, half, n", [
    # diffs 0.03, 0.04, 0.02
    ({"0": 0.83, "1": 0.86, "2": 0.86}, {"0": 0.80, "1": 0.82, "2": 0.84},
     0.03, T2 * 0.01 / math.sqrt(3), 3),
    ({"0": 0.83, "1": 0.86, "2": 0.86}, {"0": 0.80, "2": 0.84}, 0.025,
     T1 * math.sqrt(0.00005) / math.sqrt(2), 2),                 # seed 1 has no pair
    ({"0": 0.83, "1": 0.86}, {"1": 0.80}, 0.06, nan, 1),          # one pair: no interval
    ({"0": 0.83}, {"1": 0.80}, nan, nan, 0),                      # no pair
    ({"0": 0.83, "1": nan}, {"0": 0.80, "1": 0.8}, 0.03, nan, 2),  # an unlogged metric
])
def test_paired_difference_by_seed(a, b, mean, half, n):
    paired = paired_difference(a.items(), b.items())
    assert paired.pairs == n
    d = paired.difference
    assert _same(d.mean, mean) and _same(d.high - d.mean, half) and _same(d.mean - d.low, half)


@pytest.mark.parametrize("diff, goal, reading", [
    ((0.031, 0.012, 0.05), GOAL, Reading.MEETS_GOAL),
    ((0.02, 0.001, 0.04), GOAL, Reading.MEETS_GOAL),           # exactly the goal
    ((0.031, 0.012, 0.05), 0.05, Reading.BELOW_GOAL),          # a stricter goal
    ((0.008, 0.001, 0.015), GOAL, Reading.BELOW_GOAL),
    ((0.01, -0.02, 0.04), GOAL, Reading.LEVEL),
    ((0.01, 0.0, 0.02), GOAL, Reading.LEVEL),                  # a CI touching 0 includes it
    ((-0.01, -0.02, 0.0), GOAL, Reading.LEVEL),
    ((-0.03, -0.05, -0.01), GOAL, Reading.WORSE),
    ((0.05, nan, nan), GOAL, Reading.NO_INTERVAL),              # one seed pair
    ((nan, nan, nan), GOAL, Reading.MISSING),
])
def test_verdict_reads_the_interval_against_the_goal(diff, goal, reading):
    assert GOAL == 0.02                                         # the paper's 2 points
    verdict = Verdict("ERM", "dice", MeanCI(*diff), goal)
    assert verdict.reading is reading


def _verdicts(**diffs: tuple[float, float, float]) -> dict[tuple[str, str], Verdict]:
    out = {}
    for key, diff in diffs.items():
        baseline, metric = key.split("__")
        out[(baseline, metric)] = Verdict(baseline, metric, MeanCI(*diff))
    return out


@pytest.mark.parametrize("verdicts, met", [
    (_verdicts(ERM__dice=(0.03, 0.01, 0.05), random__dice=(0.025, 0.002, 0.05)), True),
    # ahead of ERM, not of the placebo
    (_verdicts(ERM__dice=(0.03, 0.01, 0.05), random__dice=(0.03, -0.01, 0.07)), False),
    # ahead of both, by less than the goal against one
    (_verdicts(ERM__dice=(0.019, 0.01, 0.03), random__dice=(0.03, 0.01, 0.05)), False),
    # one seed pair each: no interval, no claim
    (_verdicts(ERM__dice=(0.05, nan, nan), random__dice=(0.05, nan, nan)), False),
    # no placebo verdict (yet)
    (_verdicts(ERM__dice=(0.03, 0.01, 0.05)), False),
    # the goal on another metric does not count for Dice
    (_verdicts(ERM__thresholded_jaccard=(0.03, 0.01, 0.05),
               random__thresholded_jaccard=(0.03, 0.01, 0.05)), False),
])
def test_the_goal_needs_every_baseline_beaten(verdicts, met):
    assert goal_met(verdicts, "dice", ("ERM", "random")) is met
