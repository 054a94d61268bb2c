"""Per-group effects (`htl_ray.analysis.group_effects`): which groups are compared (enriched
among HTL samples, each attribute's worst under ERM, `unknown` never the worst) and each method
group's Dice minus ERM's on them, paired by seed, with the Student-t interval over the pairs;
from runs of known metrics, no MLflow."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from htl_ray.analysis.group_effects import (
    ScoredRun,
    chosen_groups,
    external_names,
    group_dice,
    group_effects,
)

T1 = 12.706204736174707        # t(0.975, 1)
T2 = 4.302652729911275         # t(0.975, 2)
nan = math.nan

# test-split Dice per (group key) and seed; None: the run did not log that group
DICE = {
    "erm": {("site", "head-neck"): [0.70, 0.72, 0.68],
            ("site", "anterior_torso"): [0.80, 0.80, 0.80],
            ("site", "unknown"): [0.50, 0.50, 0.50],        # lowest, but not a group
            ("age_bin", "75plus"): [0.75, 0.76, 0.74],
            ("age_bin", "60-74"): [0.72, 0.71, 0.73],
            ("age_bin", "unknown"): [0.40, 0.40, 0.40],
            ("contrast_quartile", "contrastQ1"): [0.60, 0.60, 0.60],
            ("contrast_quartile", "contrastQ4"): [0.85, 0.85, 0.85]},   # depleted in HTL
    "best": {("site", "head-neck"): [0.73, 0.76, 0.70],      # +3, +4, +2 points
             ("site", "anterior_torso"): [0.80, 0.80, 0.80],
             ("age_bin", "75plus"): [0.78, None, 0.75],      # +3, –, +1
             ("age_bin", "60-74"): [0.73, 0.71, 0.75],       # +1, 0, +2
             ("contrast_quartile", "contrastQ1"): [0.62, 0.62, 0.62]},   # the placebo: none
    "random": {("site", "head-neck"): [0.69, 0.73],          # seed 2 never ran: -1, +1
               ("age_bin", "75plus"): [0.75, 0.76],          # 0, 0
               ("age_bin", "60-74"): [0.70, 0.71]},          # -2, 0
}


def _runs(dice=DICE, prefix="best/test", *, val: dict | None = None) -> list[ScoredRun]:
    """Runs with `dice` on `prefix`'s split; on the test split, the same values on val too
    (where the worst group is chosen), unless `val` gives ERM's val Dice per key."""
    runs = []
    for group, by_key in dice.items():
        for seed in range(max(len(v) for v in by_key.values())):
            metrics = {f"{prefix}/group/{a}/{g}/dice": v[seed]
                       for (a, g), v in by_key.items() if v[seed] is not None}
            if prefix == "best/test":
                on_val = (val or {}) if group == "erm" and val is not None else {
                    k: v[seed] for k, v in by_key.items()}
                metrics.update({f"best/val/group/{a}/{g}/dice": v for (a, g), v
                                in on_val.items() if v is not None})
            runs.append(ScoredRun(group, str(seed), {f"{prefix}/dice": 0.8, **metrics}))
    return runs


def _enrichment(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["attribute", "group", "count", "htl", "htl_rate",
                                       "odds_ratio", "or_ci_low", "or_ci_high",
                                       "p_adjusted"])


ENRICHMENT = _enrichment([
    ("contrast_quartile", "contrastQ4", 351, 32, 0.09, 0.16, 0.11, 0.23, 1e-27),  # depleted
    ("site", "head/neck", 120, 62, 0.52, 2.5, 1.7, 3.7, 5e-5),
    ("sex × age_bin", "female × 75+", 51, 29, 0.57, 3.0, 1.7, 5.3, 0.004),  # not logged per run
    ("age_bin", "75+", 158, 79, 0.5, 2.4, 1.7, 3.4, 9e-6),
    ("diagnosis", "BKL", 108, 69, 0.64, 4.4, 2.9, 6.6, 2e-11),   # no run logs diagnosis
    ("site", "upper extremity", 183, 68, 0.37, 1.3, 0.97, 1.85, 1.0),   # not significant
    ("age_bin", "60-74", 318, 135, 0.42, 1.87, 1.4, 2.4, 0.05),   # p not below 0.05
])


def test_the_chosen_groups_are_the_enriched_ones_then_each_attributes_worst_under_erm():
    chosen = chosen_groups(_runs(), ENRICHMENT)
    assert list(zip(chosen["attribute"], chosen["group"], chosen["key"], chosen["chosen"],
                    strict=True)) == [
        ("site", "head/neck", "head-neck", "enriched, worst"),  # also site's worst under ERM
        ("age_bin", "75+", "75plus", "enriched"),
        ("age_bin", "60-74", "60-74", "worst"),      # 0.72 < 0.75; unknown's 0.40 not a group
        ("contrast_quartile", "contrastQ1", "contrastQ1", "worst")]   # Q4: depleted, not worst
    assert list(chosen["odds_ratio"][:2]) == [2.5, 2.4]
    assert chosen["odds_ratio"][2:].isna().all()
    assert list(chosen["baseline_dice"]) == pytest.approx([0.70, 0.75, 0.72, 0.60])


def test_without_an_enrichment_table_only_the_worst_groups_are_compared():
    chosen = chosen_groups(_runs(), None)
    assert list(zip(chosen["attribute"], chosen["group"], chosen["chosen"], strict=True)) == [
        ("age_bin", "60-74", "worst"), ("contrast_quartile", "contrastQ1", "worst"),
        ("site", "head-neck", "worst")]
    # an attribute whose only known groups ERM never logged has no worst group
    runs = [r for r in _runs() if r.group != "erm"]
    assert chosen_groups(runs, None).empty


def test_each_method_minus_erm_paired_by_seed_over_the_seeds_both_logged():
    effects = group_effects(_runs(), ENRICHMENT, methods=["best", "random", "loss"])
    assert list(effects.columns) == ["attribute", "group", "key", "chosen", "odds_ratio",
                                     "baseline_dice", "method", "difference", "low", "high",
                                     "pairs"]
    got = {(r.key, r.method): r for r in effects.itertuples()}
    assert set(got) == {(k, m) for k in ("head-neck", "75plus", "60-74", "contrastQ1")
                        for m in ("best", "random", "loss")}       # erm is the baseline

    def check(key, method, mean, half, pairs):
        r = got[(key, method)]
        assert r.pairs == pairs
        assert r.difference == pytest.approx(mean, abs=1e-12)
        assert (r.low, r.high) == pytest.approx((mean - half, mean + half), abs=1e-12)

    # best − ERM on head/neck: 3, 4, 2 points: mean 3, sd 1 point over 3 pairs
    check("head-neck", "best", 0.03, T2 * 0.01 / math.sqrt(3), 3)
    # best's seed-1 run logged no 75+ Dice: 2 pairs, 3 and 1 points (sd √2 points)
    check("75plus", "best", 0.02, T1 * 0.01 * math.sqrt(2) / math.sqrt(2), 2)
    check("60-74", "best", 0.01, T2 * 0.01 / math.sqrt(3), 3)
    # the placebo has seeds 0 and 1 only: 2 pairs each
    check("head-neck", "random", 0.0, T1 * 0.01, 2)             # -1, +1
    check("75plus", "random", 0.0, 0.0, 2)                      # 0, 0
    check("60-74", "random", -0.01, T1 * 0.01, 2)               # -2, 0
    check("contrastQ1", "best", 0.02, 0.0, 3)
    assert got[("contrastQ1", "random")].pairs == 0      # no placebo run logged that group
    # a method with no run yet: no pair, no number
    loss = got[("head-neck", "loss")]
    assert loss.pairs == 0 and math.isnan(loss.difference) and math.isnan(loss.low)


def test_one_pair_has_a_mean_but_no_interval_and_methods_default_to_the_runs_order():
    runs = [ScoredRun("random", "0", {"best/test/group/sex/male/dice": 0.61}),
            ScoredRun("erm", "0", {"best/test/group/sex/male/dice": 0.60}),
            ScoredRun("erm", "1", {"best/test/group/sex/male/dice": 0.64}),
            ScoredRun("best", "1", {"best/test/group/sex/male/dice": 0.60})]
    effects = group_effects(runs, None)
    assert list(effects["method"]) == ["random", "best"]
    assert list(effects["pairs"]) == [1, 1]
    assert list(effects["difference"]) == pytest.approx([0.01, -0.04])
    assert effects[["low", "high"]].isna().all().all()
    assert effects["baseline_dice"].iloc[0] == pytest.approx(0.62)


def test_an_external_dataset_is_its_own_split_with_the_worst_groups_chosen_on_val():
    """`htl-ray evaluate --data D --name derm` logs `external/derm/...` (no `best/`); its
    worst group is ERM's worst on the validation split, as for the test split: ERM's worst on
    the external images themselves (anterior torso there) would favour every method."""
    external = {"erm": {("site", "head-neck"): [0.60, 0.62],
                        ("site", "anterior_torso"): [0.50, 0.54]},
                "best": {("site", "head-neck"): [0.65, 0.62],
                         ("site", "anterior_torso"): [0.52, 0.58]}}
    on_external = {(r.group, r.seed): r.metrics for r in _runs(external, "external/derm")}
    runs = [ScoredRun(r.group, r.seed, {**r.metrics, **on_external.get((r.group, r.seed), {})})
            for r in _runs({g: DICE[g] for g in external})]
    other = ScoredRun("erm", "9", {"best/external/isic-b/group/sex/male/dice": 0.5,
                                   "external/isic-b/dice": 0.5})
    assert external_names([*runs, other]) == ["derm", "isic-b"]
    assert group_dice(other.metrics, "external/isic-b", "sex", "male") == 0.5
    assert math.isnan(group_dice(other.metrics, "test", "sex", "male"))

    # an external dataset's overall Dice alone names it (no per-group metrics logged there)
    assert external_names([ScoredRun("erm", "0", {"external/plain/dice": 0.7})]) == ["plain"]

    effects = group_effects(runs, ENRICHMENT, split="external/derm")
    assert list(zip(effects["group"], effects["chosen"], strict=True)) == [
        ("head/neck", "enriched, worst")]            # on val: 0.70 < 0.80 (external: 0.52)
    assert list(effects["difference"]) == pytest.approx([0.025])   # (5 + 0) / 2
    assert list(effects["pairs"]) == [2]
    # with all_images, first every image of the dataset: best − ERM +4 and −1 points
    overall = {("erm", "0"): 0.70, ("erm", "1"): 0.72, ("best", "0"): 0.74, ("best", "1"): 0.71}
    with_overall = [ScoredRun(r.group, r.seed, {**r.metrics, **(
        {"external/derm/dice": overall[(r.group, r.seed)]} if (r.group, r.seed) in overall
        else {})}) for r in runs]
    effects = group_effects(with_overall, ENRICHMENT, split="external/derm", all_images=True)
    assert list(zip(effects["group"], effects["chosen"], strict=True)) == [
        ("all images", "all"), ("head/neck", "enriched, worst")]
    every = effects.iloc[0]
    assert every["baseline_dice"] == pytest.approx(0.71) and every["pairs"] == 2
    assert every["difference"] == pytest.approx(0.015)
    # half-width t(0.975, 1) · sd / √2, sd of (+4, −1) points = 2.5√2 points
    assert (every["low"], every["high"]) == pytest.approx(
        (0.015 - T1 * 0.025, 0.015 + T1 * 0.025), abs=1e-9)
    # no run logged the dataset's overall Dice: no such row
    bare = [ScoredRun(r.group, r.seed, {k: v for k, v in r.metrics.items()
                                        if k != "external/derm/dice"}) for r in runs]
    assert "all images" not in set(group_effects(bare, ENRICHMENT, split="external/derm",
                                                 all_images=True)["group"])


def test_the_worst_group_is_chosen_on_val_and_scored_on_test():
    """ERM's worst site on val is anterior torso; on test head/neck is lower (ERM unlucky
    there): the table follows val. Without val Dice it falls back to test, and says so."""
    chosen = chosen_groups(_runs(val={("site", "head-neck"): 0.85,
                                      ("site", "anterior_torso"): 0.75,
                                      ("age_bin", "60-74"): 0.70}), None)
    assert list(zip(chosen["attribute"], chosen["group"], chosen["chosen"], strict=True)) == [
        ("age_bin", "60-74", "worst"), ("contrast_quartile", "contrastQ1", "worst (on test)"),
        ("site", "anterior_torso", "worst")]       # ERM has no val Dice of contrast quartiles
    assert list(chosen["baseline_dice"]) == pytest.approx([0.72, 0.60, 0.80])  # ERM on test
    no_val = [ScoredRun(r.group, r.seed, {k: v for k, v in r.metrics.items()
                                          if not k.startswith("best/val/")}) for r in _runs()]
    chosen = chosen_groups(no_val, None)
    assert set(chosen["chosen"]) == {"worst (on test)"}
