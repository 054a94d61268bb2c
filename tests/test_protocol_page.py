"""The protocol's results page (`htl_ray.protocol.page`): the generated block spliced between
its marks, the method table, the verdicts and the goal, rendered from data; no Ray, no MLflow."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from htl_ray.analysis.stats import MeanCI, Reading, Verdict
from htl_ray.protocol.page import (
    BEGIN,
    END,
    goal_lines,
    group_effect_lines,
    marks,
    method_table,
    verdict_lines,
    write_results,
)

nan = math.nan


def _verdicts(diffs: dict[tuple[str, str], tuple[float, float, float]]
              ) -> dict[tuple[str, str], Verdict]:
    return {(b, m): Verdict(b, m, MeanCI(*d)) for (b, m), d in diffs.items()}


def test_write_results_replaces_only_the_generated_block(tmp_path):
    page = tmp_path / "results.md"
    write_results(page, "first")
    assert page.read_text() == f"{BEGIN}\nfirst\n{END}\n"
    page.write_text("# Notes\n\nby hand\n\n" + page.read_text() + "\n## After\n\nmore\n")
    write_results(page, "second")
    text = page.read_text()
    assert text.startswith("# Notes\n\nby hand\n\n" + BEGIN + "\nsecond\n" + END)
    assert text.endswith("## After\n\nmore\n") and "first" not in text


def test_a_named_block_lives_beside_the_protocols_own(tmp_path):
    """`htl-ray reproduce --block round2`: a second round writes its own block and leaves
    round one's as it is, in either order."""
    page = tmp_path / "results.md"
    write_results(page, "round one")
    write_results(page, "round two", name="round2")
    write_results(page, "round one again")
    write_results(page, "round two again", name="round2")
    begin2, end2 = marks("round2")
    assert begin2 != BEGIN and end2 != END and "round2" in begin2 and "round2" in end2
    assert page.read_text() == (f"{BEGIN}\nround one again\n{END}\n\n"
                                f"{begin2}\nround two again\n{end2}\n")


def test_misordered_marks_are_left_alone_and_a_fresh_block_appended(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"intro\n{END}\nmiddle\n{BEGIN}\nstale, no end mark\n")
    write_results(page, "fresh")
    text = page.read_text()
    assert text.startswith(f"intro\n{END}\nmiddle\n{BEGIN}\nstale, no end mark\n")
    assert text.endswith(f"{BEGIN}\nfresh\n{END}\n")


def _run(method, seed, dice, thr):
    metrics = {} if dice is None else {"best/test/dice": dice, "best/test/iou": dice - 0.1,
                                       "best/test/thresholded_jaccard": thr}
    return {"run_id": f"{method}{seed}", "name": f"{method} s{seed}", "seed": str(seed),
            "params": {"htl.method": method, "run.seed": str(seed), "htl.lam": "2"},
            "metrics": metrics}


def test_method_table_over_seeds_with_a_missing_arm_and_an_unscored_run():
    """2 seeds: means with CIs, paired Δ; a comparator with no finished run yet leaves its
    columns empty; a run without test metrics does not count as a seed."""
    runs = pd.DataFrame([_run("htl", 0, 0.80, 0.70), _run("htl", 1, 0.84, 0.74),
                         _run("erm", 0, 0.78, 0.66), _run("erm", 1, 0.80, 0.68),
                         _run("erm", 2, None, None)])
    table, verdicts = method_table(runs, ["erm", "random"])
    assert list(table["method"]) == ["htl", "erm"]
    assert list(table["seeds"]) == [2, 2]
    htl = table.set_index("method").loc["htl"]
    # mean 0.82, half-width t(0.975, 1) · sd 0.02√2 / √2 = 12.706 · 0.02
    assert htl["dice"] == "0.820 [0.566, 1.074]"
    assert htl["Δthr-J vs ERM"].startswith("+5.0 [")          # (4 + 6) / 2 points
    assert htl["ΔDice vs ERM"] == "+3.0 [-9.7, +15.7]"         # 2 and 4 points
    d = verdicts[("ERM", "thresholded_jaccard")].difference
    assert d.mean == pytest.approx(0.05) and d.low < d.mean < d.high
    assert verdicts[("ERM", "dice")].reading is Reading.LEVEL
    assert verdicts[("random", "dice")].reading is Reading.MISSING    # no placebo run yet
    assert set(table["Δthr-J vs random"]) == {"–"}           # no placebo run yet: pending


def test_method_table_pairs_each_method_with_erm_and_the_placebo():
    """Three seeds of HTL, ERM, the placebo and loss: each Δ is the mean of the seed-paired
    differences with its Student-t interval, in points; HTL's are the verdicts."""
    t2 = 4.302652729911275                                   # t(0.975, 2)
    dice = {"htl": [0.83, 0.86, 0.86], "erm": [0.80, 0.82, 0.84],
            "random": [0.81, 0.84, 0.85], "loss": [0.70, 0.72, 0.74]}
    runs = pd.DataFrame([_run(m, seed, d, d - 0.1) for m, values in dice.items()
                         for seed, d in enumerate(values)])
    table, verdicts = method_table(runs, ["erm", "random", "loss"])
    assert list(table["method"]) == ["htl", "erm", "random", "loss"]
    rows = table.set_index("method")
    # HTL − ERM: 3, 4, 2 points; HTL − placebo: 2, 2, 1 points
    half = 100 * t2 * 0.01 / 3 ** 0.5
    assert rows.loc["htl", "ΔDice vs ERM"] == f"+3.0 [{3 - half:+.1f}, {3 + half:+.1f}]"
    half = 100 * t2 * (1 / 3) ** 0.5 * 0.01 / 3 ** 0.5
    assert rows.loc["htl", "ΔDice vs random"] == \
        f"+1.7 [{5 / 3 - half:+.1f}, {5 / 3 + half:+.1f}]"
    assert rows.loc["htl", "Δthr-J vs random"] == rows.loc["htl", "ΔDice vs random"]
    assert rows.loc["erm", "ΔDice vs random"].startswith("-1.3 [")      # -1, -2, -1
    assert rows.loc["random", "ΔDice vs random"] == "–"
    assert rows.loc["loss", "ΔDice vs ERM"].startswith("-10.0 [")
    assert rows.loc["loss", "dice"] == f"0.720 [{0.72 - t2 * 0.02 / 3 ** 0.5:.3f}, " \
                                       f"{0.72 + t2 * 0.02 / 3 ** 0.5:.3f}]"
    assert set(verdicts) == {(b, m) for b in ("ERM", "random")
                             for m in ("dice", "thresholded_jaccard")}
    placebo = verdicts[("random", "dice")]
    assert placebo.difference.mean == pytest.approx(1 / 60)
    assert placebo.reading is Reading.BELOW_GOAL               # CI above 0, below 2 points
    assert verdicts[("ERM", "dice")].reading is Reading.MEETS_GOAL
    assert verdict_lines(verdicts.values())[2].startswith(
        "HTL − random, Dice: +1.7 points [+0.2, +3.1]: better, but by less than")


def test_two_htl_configurations_in_one_sweep_are_refused():
    runs = pd.DataFrame([_run("htl", 0, 0.80, 0.70), _run("erm", 0, 0.78, 0.66)])
    other = _run("htl", 0, 0.81, 0.71)
    other["params"] = {**other["params"], "htl.lam": "3"}
    other["run_id"] = "htl0b"
    with pytest.raises(ValueError, match="two configurations of the chosen group"):
        method_table(pd.concat([runs, pd.DataFrame([other])], ignore_index=True), ["erm"])


def _tagged(group, method, lam, seed, dice):
    run = _run(method, seed, dice, dice - 0.1)
    run["run_id"] = f"{group}{seed}"
    run["params"] = {**run["params"], "htl.lam": lam}
    run["tags"] = {"htl.group": group}
    return run


def test_method_table_keys_groups_by_their_tag_when_two_share_a_method():
    """A second round: the chosen down-weighting variant (best: tta, λ < 0) beside the tta
    and htl groups at round one's λ. Each group is its own row, in the sweep's group order;
    best is named with its λ (a comparator group has its method's name); the verdicts are
    best's, paired by seed with erm."""
    runs = pd.DataFrame([
        _tagged(g, m, lam, seed, dice + 0.01 * seed)
        for g, m, lam, dice in (("best", "tta", "-0.5", 0.83), ("htl", "htl", "2.4", 0.80),
                                ("tta", "tta", "2.4", 0.79), ("erm", "erm", "2.4", 0.81))
        for seed in (0, 1)])
    table, verdicts = method_table(runs, ["htl", "erm", "tta"])
    assert list(table["method"]) == ["best (tta, λ=-0.50)", "htl", "erm", "tta"]
    rows = table.set_index("method")
    assert rows.loc["best (tta, λ=-0.50)", "ΔDice vs ERM"] == "+2.0 [+2.0, +2.0]"   # +2 twice
    assert rows.loc["tta", "ΔDice vs ERM"] == "-2.0 [-2.0, -2.0]"
    assert verdicts[("ERM", "dice")].difference.mean == pytest.approx(0.02)


def test_verdicts_read_the_confidence_interval_against_the_two_point_goal():
    lines = verdict_lines(_verdicts({
        ("ERM", "thresholded_jaccard"): (0.031, 0.012, 0.05),
        ("ERM", "dice"): (0.008, 0.001, 0.015),
        ("random", "thresholded_jaccard"): (0.01, -0.02, 0.04),
        ("random", "dice"): (-0.03, -0.05, -0.01),
        ("loss", "dice"): (0.05, nan, nan),
        ("el2n", "dice"): (nan, nan, nan),            # no pair yet: no line
    }).values())
    assert lines == [
        "HTL − ERM, thresholded Jaccard: +3.1 points [+1.2, +5.0]: **better, meeting the "
        "≥ 2-point goal**",
        "HTL − ERM, Dice: +0.8 points [+0.1, +1.5]: better, but by less than the 2-point goal",
        "HTL − random, thresholded Jaccard: +1.0 points [-2.0, +4.0]: no significant "
        "difference (the 95% CI includes 0)",
        "HTL − random, Dice: -3.0 points [-5.0, -1.0]: **significantly worse**",
        "HTL − loss, Dice: +5.0 points (one seed pair: no CI)"]


def test_the_goal_needs_both_baselines_beaten_on_one_metric_with_cis_above_zero():
    # supervised: ahead of ERM by 3 points (CI > 0) but not of the placebo: not met
    supervised = _verdicts({("ERM", "thresholded_jaccard"): (0.03, 0.01, 0.05),
                            ("random", "thresholded_jaccard"): (0.03, -0.01, 0.07),
                            ("ERM", "dice"): (0.0, -0.01, 0.01),
                            ("random", "dice"): (0.0, -0.01, 0.01)})
    # weak: Dice ahead of both by ≥ 2 with CIs > 0 (thr-J is not): met on Dice
    weak = _verdicts({("ERM", "thresholded_jaccard"): (0.01, 0.005, 0.02),
                      ("random", "thresholded_jaccard"): (0.03, 0.01, 0.05),
                      ("ERM", "dice"): (0.021, 0.001, 0.04),
                      ("random", "dice"): (0.025, 0.002, 0.05)})
    assert goal_lines([("supervised", supervised, True), ("weak", weak, True)]) == [
        "**The goal** — HTL ahead of both ERM and the random placebo by ≥ 2 points of "
        "thresholded Jaccard or Dice, 95% CIs excluding 0, in at least one setting: **met** in "
        "weak (Dice). Significantly worse than ERM or the placebo: nowhere.", ""]
    # ahead of both by 1.9 points: below the goal; one seed pair: no interval, no claim;
    # a CI below 0 is named
    short = _verdicts({("ERM", "dice"): (0.019, 0.01, 0.03),
                       ("random", "dice"): (0.03, 0.01, 0.05),
                       ("ERM", "thresholded_jaccard"): (-0.03, -0.05, -0.01)})
    one_seed = _verdicts({("ERM", "dice"): (0.05, nan, nan), ("random", "dice"): (0.05, nan, nan)})
    text = goal_lines([("supervised", short, True), ("semi", one_seed, False)])[0]
    assert "**not met** in any setting so far." in text
    assert "Significantly worse than ERM or the placebo: supervised: HTL − ERM, thr-J." in text
    assert text.endswith("Still without every seed of HTL, ERM and the placebo: semi.")
    assert "so far" not in goal_lines([("weak", supervised, True)])[0]


def _group_run(group, method, seed, dice):
    """A confirmation run with per-group Dice: `dice` maps a metric name after its split
    (`best/test/` or, as `htl-ray evaluate --data --name derm` logs it, `external/derm/`)."""
    return {"run_id": f"{group}{seed}", "name": f"{group} s{seed}", "seed": str(seed),
            "params": {"htl.method": method, "run.seed": str(seed)},
            "tags": {"htl.group": group, "htl.method": method}, "metrics": dict(dice)}


def test_group_effects_are_tabled_per_group_against_erm_on_test_and_each_external_dataset():
    """Columns are method groups (`htl.group`), not methods: best and tta share
    `htl.method=htl`; head/neck is enriched and ERM's worst site on val, so it is the worst
    on the external dataset too, though ERM's Dice there is lowest on anterior torso."""
    hn, at = "group/site/head-neck/dice", "group/site/anterior_torso/dice"
    runs = pd.DataFrame([
        _group_run("erm", "erm", 0, {"best/test/dice": 0.80, "external/derm/dice": 0.70,
                                     f"best/test/{hn}": 0.70, f"best/test/{at}": 0.80,
                                     f"best/val/{hn}": 0.70, f"best/val/{at}": 0.80,
                                     f"external/derm/{hn}": 0.60, f"external/derm/{at}": 0.50}),
        _group_run("erm", "erm", 1, {"best/test/dice": 0.82, "external/derm/dice": 0.72,
                                     f"best/test/{hn}": 0.72, f"best/test/{at}": 0.82,
                                     f"best/val/{hn}": 0.72, f"best/val/{at}": 0.82,
                                     f"external/derm/{hn}": 0.62, f"external/derm/{at}": 0.52}),
        _group_run("best", "htl", 0, {"best/test/dice": 0.81, "external/derm/dice": 0.74,
                                      f"best/test/{hn}": 0.73, f"external/derm/{hn}": 0.65,
                                      f"external/derm/{at}": 0.52}),
        _group_run("best", "htl", 1, {"best/test/dice": 0.84, "external/derm/dice": 0.71,
                                      f"best/test/{hn}": 0.76, f"external/derm/{hn}": 0.62,
                                      f"external/derm/{at}": 0.58}),
        _group_run("random", "random", 0, {"best/test/dice": 0.79, f"best/test/{hn}": 0.71}),
        _group_run("tta", "htl", 0, {f"best/test/{hn}": 0.70}),
        _group_run("tta", "htl", 1, {f"best/test/{hn}": 0.72})])
    enrichment = pd.DataFrame({"attribute": ["site", "site"], "group": ["head/neck", "scalp"],
                               "odds_ratio": [2.54, 3.0], "p_adjusted": [5e-5, 0.2]})
    lines = group_effect_lines(runs, enrichment, methods=["best", "random", "loss"])
    # best − ERM, head/neck: 3 and 4 points; half-width t(0.975, 1) · sd (0.5√2) / √2
    # external, best − ERM: head/neck 5 and 0 points
    # all images: best − ERM +1 and +2 points on test, +4 and −1 on the external dataset
    intro = ("per group: Dice of each method group minus ERM's, paired by seed, in points "
             "(×100), 95% Student-t CI over the seed pairs, n = pairs; {}groups enriched among "
             "HTL samples (Holm-corrected p < 0.05, odds ratio > 1) and each attribute's "
             "worst group under ERM, chosen on the validation split so that the choice does "
             "not favour the methods on the images scored here (`unknown` is never the "
             "worst). Each interval stands alone: with this many cells, expect about one in "
             "twenty to exclude 0 by chance.")
    assert lines == [
        f"Test split, {intro.format('')}", "",
        "| group | chosen as | ERM Dice | htl − ERM | random − ERM | tta − ERM |\n"
        "|---|---|---|---|---|---|\n"
        "| site = head/neck | enriched (OR 2.5), worst for ERM | 0.710 | +3.5 [-2.9, +9.9] (n=2) "
        "| +1.0 (n=1) | +0.0 [+0.0, +0.0] (n=2) |", "",
        "External test-only dataset `derm` (`htl-ray evaluate --data … --name derm`), "
        + intro.format("all its images, then the "),
        "",
        "| group | chosen as | ERM Dice | htl − ERM | random − ERM | tta − ERM |\n"
        "|---|---|---|---|---|---|\n"
        "| all images | every image | 0.710 | +1.5 [-30.3, +33.3] (n=2) | – | – |\n"
        "| site = head/neck | enriched (OR 2.5), worst for ERM | 0.610 | +2.5 [-29.3, +34.3] "
        "(n=2) | – | – |",
        ""]
    # no group Dice logged (runs scored before per-group metrics): one line, no table; on an
    # external dataset, its all-images row alone
    bare = runs.assign(metrics=[{"best/test/dice": 0.8, "external/derm/dice": 0.7}]
                       * len(runs))
    lines = group_effect_lines(bare, enrichment)
    assert lines[:2] == ["Test split, per group: no group Dice to compare yet.", ""]
    table = lines[4].splitlines()
    assert len(table) == 3 and table[2].startswith("| all images | every image | 0.700 | +0.0")


def test_a_round_whose_chosen_configuration_is_not_htl_names_it_in_its_verdicts():
    from htl_ray.protocol.page import chosen_label

    verdicts = _verdicts({("ERM", "dice"): (0.01, -0.01, 0.03)})
    assert verdict_lines(verdicts.values(), chosen="best (htl, λ=-0.52)") == [
        "best (htl, λ=-0.52) − ERM, Dice: +1.0 points [-1.0, +3.0]: no significant difference "
        "(the 95% CI includes 0)"]
    assert goal_lines([("weak", verdicts, True)], chosen="the chosen configuration")[0] \
        .startswith("**The goal** — the chosen configuration ahead of both ERM")
    runs = pd.DataFrame([_tagged("best", "htl", "-0.52", 0, 0.8),
                         _tagged("erm", "erm", "2.4", 0, 0.8)])
    assert chosen_label(runs, ["erm", "random"]) == "HTL"
    # the htl group has no run yet, but the sweep has one: best is not called htl
    assert chosen_label(runs, ["erm", "random", "htl"]) == "best (htl, λ=-0.52)"
    table, _ = method_table(runs, ["erm", "random", "htl"])
    assert list(table["method"]) == ["best (htl, λ=-0.52)", "erm"]
