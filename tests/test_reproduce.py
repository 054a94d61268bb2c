"""The reproduction protocol end to end on a tiny synthetic setting (real Ray Tune sweep, real
training runs, real MLflow store): results regenerated from MLflow, finished runs skipped on a
second pass, hand-written text around the generated block kept."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from htl_ray.archive import ORIGIN_TAG
from htl_ray.reproduce import BEGIN, END, run_protocol, verdict_lines, write_results


def test_write_results_replaces_only_the_generated_block(tmp_path):
    page = tmp_path / "results.md"
    write_results(page, "first")
    assert page.read_text() == f"{BEGIN}\nfirst\n{END}\n"
    page.write_text("# Notes\n\nby hand\n\n" + page.read_text() + "\n## After\n\nmore\n")
    write_results(page, "second")
    text = page.read_text()
    assert text.startswith("# Notes\n\nby hand\n\n" + BEGIN + "\nsecond\n" + END)
    assert text.endswith("## After\n\nmore\n") and "first" not in text


def test_misordered_marks_are_left_alone_and_a_fresh_block_appended(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"intro\n{END}\nmiddle\n{BEGIN}\nstale, no end mark\n")
    write_results(page, "fresh")
    text = page.read_text()
    assert text.startswith(f"intro\n{END}\nmiddle\n{BEGIN}\nstale, no end mark\n")
    assert text.endswith(f"{BEGIN}\nfresh\n{END}\n")


def test_method_table_over_seeds_with_a_missing_arm_and_an_unscored_run():
    """2 seeds: means with CIs, paired Δ; a comparator with no finished run yet leaves its
    columns empty; a run without test metrics does not count as a seed."""
    import pandas as pd

    from htl_ray.reproduce import method_table

    def run(method, seed, dice, thr):
        metrics = {} if dice is None else {"best/test/dice": dice, "best/test/iou": dice - 0.1,
                                           "best/test/thresholded_jaccard": thr}
        return {"run_id": f"{method}{seed}", "name": f"{method} s{seed}", "seed": str(seed),
                "params": {"htl.method": method, "run.seed": str(seed), "htl.lam": "2"},
                "metrics": metrics}

    runs = pd.DataFrame([run("htl", 0, 0.80, 0.70), run("htl", 1, 0.84, 0.74),
                         run("erm", 0, 0.78, 0.66), run("erm", 1, 0.80, 0.68),
                         run("erm", 2, None, None)])
    table, verdict = method_table(runs, ["erm", "random"])
    assert list(table["method"]) == ["htl", "erm"]
    assert list(table["seeds"]) == [2, 2]
    htl = table.set_index("method").loc["htl"]
    assert htl["dice"].startswith("0.820 [")
    assert htl["Δthr-J vs ERM"].startswith("+5.0 [")          # (4 + 6) / 2 points
    d, lo, hi = verdict[("ERM", "thresholded_jaccard")]
    assert d == pytest.approx(0.05) and lo < d < hi
    assert set(table["Δthr-J vs random"]) == {"–"}           # no placebo run yet: pending


def test_verdicts_read_the_confidence_interval_against_the_two_point_goal():
    lines = verdict_lines({
        ("ERM", "thresholded_jaccard"): (0.031, 0.012, 0.05),
        ("ERM", "dice"): (0.008, 0.001, 0.015),
        ("random", "thresholded_jaccard"): (0.01, -0.02, 0.04),
        ("random", "dice"): (-0.03, -0.05, -0.01),
    })
    assert lines == [
        "HTL − ERM, thresholded Jaccard: +3.1 points [+1.2, +5.0]: **better, meeting the "
        "≥ 2-point goal**",
        "HTL − ERM, Dice: +0.8 points [+0.1, +1.5]: better, but by less than the 2-point goal",
        "HTL − random, thresholded Jaccard: +1.0 points [-2.0, +4.0]: no significant "
        "difference (the 95% CI includes 0)",
        "HTL − random, Dice: -3.0 points [-5.0, -1.0]: **significantly worse**"]


def test_the_goal_needs_both_baselines_beaten_on_one_metric_with_cis_above_zero():
    from htl_ray.reproduce import goal_lines

    nan = float("nan")
    # supervised: ahead of ERM by 3 points (CI > 0) but not of the placebo: not met
    supervised = {("ERM", "thresholded_jaccard"): (0.03, 0.01, 0.05),
                  ("random", "thresholded_jaccard"): (0.03, -0.01, 0.07),
                  ("ERM", "dice"): (0.0, -0.01, 0.01), ("random", "dice"): (0.0, -0.01, 0.01)}
    # weak: Dice ahead of both by ≥ 2 with CIs > 0 (thr-J is not): met on Dice
    weak = {("ERM", "thresholded_jaccard"): (0.01, 0.005, 0.02),
            ("random", "thresholded_jaccard"): (0.03, 0.01, 0.05),
            ("ERM", "dice"): (0.021, 0.001, 0.04), ("random", "dice"): (0.025, 0.002, 0.05)}
    assert goal_lines([("supervised", supervised, True), ("weak", weak, True)]) == [
        "**The goal** — HTL ahead of both ERM and the random placebo by ≥ 2 points of "
        "thresholded Jaccard or Dice, 95% CIs excluding 0, in at least one setting: **met** in "
        "weak (Dice). Significantly worse than ERM or the placebo: nowhere.", ""]
    # ahead of both by 1.9 points: below the goal; one seed pair: no interval, no claim;
    # a CI below 0 is named
    short = {("ERM", "dice"): (0.019, 0.01, 0.03), ("random", "dice"): (0.03, 0.01, 0.05),
             ("ERM", "thresholded_jaccard"): (-0.03, -0.05, -0.01)}
    one_seed = {("ERM", "dice"): (0.05, nan, nan), ("random", "dice"): (0.05, nan, nan)}
    text = goal_lines([("supervised", short, True), ("semi", one_seed, False)])[0]
    assert "**not met** in any setting so far." in text
    assert "Significantly worse than ERM or the placebo: supervised: HTL − ERM, thr-J." in text
    assert text.endswith("Still without every seed of HTL, ERM and the placebo: semi.")
    assert "so far" not in goal_lines([("weak", supervised, True)])[0]


def test_protocol_runs_resumes_and_reports_from_mlflow(ray_cluster, synth_dataset, tmp_path,
                                                       tracking_uri, fresh_store):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "overrides": [f"data.path={synth_dataset}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=repro", "train.epochs=2", "data.limit_train=16",
                      "data.batch_size=8", "model.decoder_channels=[16,8,8,4,4]",
                      "scaling.num_workers=1", "scaling.resources_per_worker={CPU: 1}",
                      "htl.method=htl", "htl.refresh_every=1", "htl.warmup_epochs=1",
                      "htl.asynchronous=false"],
        "sweep": {"name": "tiny-repro", "num_samples": 1, "max_concurrent": 1,
                  "storage_path": str(tmp_path / "sweeps"), "comparators": ["erm", "random"]},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}},
        "ablations": {"refresh-every-2": ["htl.refresh_every=2"]},
    }))
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nwritten by hand\n")
    lines: list[str] = []

    assert run_protocol([sweep_file], 1, page, report_only=True, log=lines.append) is False
    assert "*Not started.*" in page.read_text() and "0 of 1 trials" in page.read_text()

    lines.clear()
    archive = tmp_path / "archive"
    # one seed per method keeps this test short; intervals are tested in test_compare.py;
    # without its ablations first: the protocol is complete once the verdict's runs are
    assert run_protocol([sweep_file], 1, page, archive=archive, ablate=False,
                        log=lines.append) is True
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("repro")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    assert not any(r.data.tags.get("htl.role") == "ablation" for r in runs)
    assert "ablation runs (val only) 0 of 1" in page.read_text()
    assert "*Ablations not run (`--no-ablations`)" in page.read_text()
    confirm = [r for r in runs if r.data.tags.get("htl.role") == "confirm"]
    assert len([r for r in runs if r.data.tags.get("htl.role") == "trial"]) == 1
    assert sorted((r.data.params["htl.method"], r.data.params["run.seed"]) for r in confirm) \
        == [("erm", "0"), ("htl", "0"), ("random", "0")]
    # the placebo and ERM runs got the lambda the sweep chose for HTL
    assert len({r.data.params["htl.lam"] for r in confirm}) == 1
    test_lam = confirm[0].data.params["htl.lam"]
    assert all("best/test/dice" in r.data.metrics for r in confirm)

    text = page.read_text()
    assert text.startswith("# Results\n\nwritten by hand\n") and text.count(BEGIN) == 1
    assert "**Complete.**" in text and "1 of 1 trials finished" in text
    # --no-ablations: nothing left to train, so both totals are final
    assert "compute hours in all. **Complete.**" in text and "compute so far" not in text
    # one seed: no interval, so the goal is not met (nor anything significantly worse)
    assert "in at least one setting: **not met** in any setting. Significantly worse than " \
           "ERM or the placebo: nowhere." in text
    block = text.split(BEGIN)[1].split(END)[0]
    table = [row for row in block.splitlines() if row.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in table[1:]}
    assert list(rows)[:3] == ["htl", "erm", "random"]
    assert header[:6] == ["method", "seeds", "dice", "iou", "thresholded_jaccard",
                          "worst_group_dice"]
    # the table's numbers are the runs' test metrics, Δ = paired difference in points
    test = {r.data.params["htl.method"]: r.data.metrics for r in confirm}
    assert rows["htl"][2] == f"{test['htl']['best/test/dice']:.3f}"        # 1 seed: no CI
    assert rows["random"][4] == f"{test['random']['best/test/thresholded_jaccard']:.3f}"
    key = "best/test/dice"
    assert rows["htl"][header.index("ΔDice vs ERM")] == \
        f"{100 * (test['htl'][key] - test['erm'][key]):+.1f}"
    assert rows["htl"][header.index("ΔDice vs random")] == \
        f"{100 * (test['htl'][key] - test['random'][key]):+.1f}"
    col = header.index("Δthr-J vs ERM")
    assert rows["erm"][col] == "–" and rows["random"][header.index("Δthr-J vs random")] == "–"
    assert "HTL − ERM, thresholded Jaccard:" in block and "HTL − random, Dice:" in block
    report_html = tmp_path / "sweeps" / "tiny-repro" / "report" / "report.html"
    assert report_html.is_file()
    # the page follows the protocol: rewritten after each of the 3 confirmation runs, and last
    assert sum("results written to" in line for line in lines) == 4
    built = report_html.stat().st_mtime_ns

    # with its ablations (the default): the verdict's runs are skipped, the variant trains,
    # scored on val only, and the page pairs it by seed with the chosen config and ERM
    lines.clear()
    assert run_protocol([sweep_file], 1, page, archive=archive, log=lines.append) is True
    assert any("tiny-repro complete, skipped" in line for line in lines)
    ablation = client.search_runs([exp.experiment_id], "tags.`htl.role` = 'ablation'")
    assert [(r.info.status, r.data.tags["htl.group"], r.data.params["htl.refresh_every"],
             r.data.params["train.evaluate_test"], r.data.params["htl.lam"])
            for r in ablation] == [("FINISHED", "refresh-every-2", "2", "False", test_lam)]
    abl = ablation[0].data.metrics
    assert "best/val/dice" in abl and not any(k.startswith("best/test/") for k in abl)
    text = page.read_text()
    assert "ablation runs (val only) 1 of 1" in text and "*Ablations incomplete" not in text
    abl_row = next([c.strip() for c in r.strip("|").split("|")] for r in text.splitlines()
                   if r.startswith("| refresh-every-2 "))
    val = {r.data.params["htl.method"]: r.data.metrics["best/val/dice"] for r in confirm}
    assert abl_row[1:4] == ["`htl.refresh_every=2`", "1", f"{abl['best/val/dice']:.3f}"]
    assert abl_row[4] == f"{100 * (abl['best/val/dice'] - val['htl']):+.1f}"   # vs chosen
    assert abl_row[6] == f"{100 * (abl['best/val/dice'] - val['erm']):+.1f}"   # vs ERM
    assert sum("results written to" in line for line in lines) == 2

    # a second pass trains nothing: every run is finished in MLflow
    n_runs = len(client.search_runs([exp.experiment_id]))
    lines.clear()
    assert run_protocol([sweep_file], 1, page, archive=archive, log=lines.append) is True
    assert len(client.search_runs([exp.experiment_id])) == n_runs
    assert any("tiny-repro complete, skipped" in line for line in lines)
    assert not any("ablations" in line for line in lines)          # nor its ablations
    assert page.read_text().count(BEGIN) == 1
    assert page.read_text().split(BEGIN)[1].split("Generated")[1].split("\n", 1)[1] == \
        text.split(BEGIN)[1].split("Generated")[1].split("\n", 1)[1]   # same page, same table
    assert report_html.stat().st_mtime_ns == built     # the runs did not change: report reused

    # another machine, a later sitting: a fresh MLflow store and sweep directory, and the
    # archive as committed by a sitting that had not yet finished the placebo run
    records = {f: json.loads(f.read_text()) for f in (archive / "tiny-repro").glob("*.json")}
    assert sorted(r["tags"]["htl.role"] for r in records.values()) == \
        ["ablation", "confirm", "confirm", "confirm", "sweep", "trial"]
    placebo = next(f for f, r in records.items() if r["tags"].get("htl.group") == "random")
    placebo.unlink()
    elsewhere = fresh_store(tmp_path / "elsewhere.db")
    moved = [f"tracking.uri={elsewhere}", f"sweep.storage_path={tmp_path / 'elsewhere'}"]
    page2 = tmp_path / "results2.md"
    lines.clear()
    assert run_protocol([sweep_file], 1, page2, overrides=moved, archive=archive,
                        log=lines.append) is True
    assert any("5 run(s) of tiny-repro imported" in line for line in lines)
    assert not any("ablations" in line for line in lines)   # imported, counted, not retrained
    assert any("sweep tiny-repro was run elsewhere" in line for line in lines)
    client2 = MlflowClient(elsewhere)
    runs2 = client2.search_runs([client2.get_experiment_by_name("repro").experiment_id])
    trained = [r for r in runs2 if ORIGIN_TAG not in r.data.tags]
    assert [(r.data.tags["htl.role"], r.data.params["htl.method"], r.info.status)
            for r in trained] == [("confirm", "random", "FINISHED")]     # only what was missing
    assert len(runs2) == 6 and trained[0].data.params["htl.lam"] == test_lam
    # ... and archived in turn, under its own run id, nested under the sweep's original id
    retrained = json.loads((archive / "tiny-repro" / f"{trained[0].info.run_id}.json")
                           .read_text())
    parent_origin = next(r["run_id"] for r in records.values()
                         if r["tags"]["htl.role"] == "sweep")
    assert retrained["tags"]["mlflow.parentRunId"] == parent_origin
    assert len(list((archive / "tiny-repro").glob("*.json"))) == 6
    text2 = page2.read_text()
    assert "**Complete.**" in text2 and "1 of 1 trials finished" in text2
    assert "compute so far" not in text2 and "; compute " in text2
    rows2 = {r.split("|")[1].strip(): r for r in text2.splitlines() if r.startswith("| ")}
    assert rows2["htl"] == next(r for r in table if r.split("|")[1].strip() == "htl")
    assert rows2["refresh-every-2"] == next(r for r in text.splitlines()
                                            if r.startswith("| refresh-every-2 "))
    assert "its enrichment table came with the archive" in text2


def test_protocol_files_shipped_are_valid():
    from pathlib import Path

    from htl_ray.tune.space import load_sweep

    root = Path(__file__).resolve().parents[1] / "experiments" / "reproduce"
    sweeps = {p.stem: load_sweep(p) for p in sorted(root.glob("*.yaml"))}
    assert set(sweeps) == {"supervised", "weak", "semi"}
    for name, sweep in sweeps.items():
        assert sweep.base.supervision.setting == name
        # the five methods in every setting (semi: loss/EL2N against pseudo-labels)
        assert sweep.base.htl.method == "htl"
        assert sweep.settings.comparators == ["erm", "random", "loss", "el2n"], name
        assert sweep.base.data.path == "data/isic128" and sweep.base.train.evaluate_test
        # on 2 cores a background refresh lags several epochs: attention must start on time
        assert sweep.base.htl.asynchronous is False
        assert sweep.base.htl.scorer_threads == 2          # the waiting trainers' cores too
        assert sweep.base.train.max_failures >= 1          # hours unattended: workers get lost
        # what the sweep keeps fixed is tried afterwards, on val: the refresh interval, weights
        assert sweep.ablations == {"refresh-every-1": ["htl.refresh_every=1"],
                                   "refresh-every-4": ["htl.refresh_every=4"],
                                   "soft-weights": ["htl.weighting=soft"]}, name
        assert sweep.base.htl.refresh_every == 2 and sweep.settings.ablation_seeds == 1
    assert sweeps["semi"].base.supervision.label_fraction == 0.25
    assert len({s.settings.name for s in sweeps.values()}) == 3


def test_gpu_variant_overrides_every_setting_and_report_only_trains_nothing(tmp_path):
    """The documented GPU-scale command line, with --report-only: configs valid, nothing run."""
    import subprocess
    import sys
    from pathlib import Path

    from htl_ray.config import read_yaml_list
    from htl_ray.tune.space import load_sweep

    root = Path(__file__).resolve().parents[1] / "experiments" / "reproduce"
    overrides = read_yaml_list(root / "gpu" / "overrides.yaml", "overrides")
    for name in ("supervised", "weak", "semi"):
        sweep = load_sweep(root / f"{name}.yaml", overrides)
        base = sweep.base
        assert base.data.path.endswith("isic256") and base.scaling.use_gpu
        assert sweep.ablations == {"refresh-every-1": ["htl.refresh_every=1"],
                                   "soft-weights": ["htl.weighting=soft"],
                                   "refresh-every-8": ["htl.refresh_every=8"]}
        assert sweep.settings.ablation_seeds == 3 and sweep.base.htl.refresh_every == 4
        assert base.train.epochs == 40 and base.supervision.setting == name
        assert base.htl.asynchronous and base.htl.scorer_gpus > 0
        assert base.htl.scorer_threads == 0                # trainers run beside the scorer
    page = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, "-m", "htl_ray.cli", "reproduce", str(root / "supervised.yaml"),
         str(root / "semi.yaml"), "--report-only", "--results", str(page),
         "--set-from", str(root / "gpu" / "overrides.yaml"),
         "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
         "--set", f"sweep.storage_path={tmp_path / 'sweeps'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reproduction protocol in progress" in proc.stdout
    text = page.read_text()
    assert "0.0 compute hours so far. **In progress**" in text
    assert text.count("*Not started.*") == 2
    # the command that regenerates it, overrides spelled out
    assert "--set data.path=/mnt/shared/data/isic256" in text
    assert "--set 'scaling.resources_per_worker={CPU: 4, GPU: 0.75}'" in text
    assert "### semi: sweep `reproduce-semi`" in text and not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("sweep_ended", [True, False])
def test_trials_cut_short_count_once_their_sweep_has_ended(tmp_path, synth_dataset,
                                                           tracking_uri, sweep_ended):
    """A trial ASHA stopped just before a Ctrl-C was tagged interrupted by older code; once the
    sweep has ended (its parent records best.* params) Tune runs none of its trials again, so
    it has ended too. A run Tune re-ran as a new trial (orphaned) never counts."""
    from htl_ray import tracking
    from htl_ray.reproduce import setting_section, setting_status
    from htl_ray.tune.space import load_sweep
    from htl_ray.tune.sweep import STATE_FILE

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": [f"data.path={synth_dataset}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=count", "train.epochs=8"],
        "sweep": {"name": "count", "num_samples": 3, "storage_path": str(tmp_path)},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}}}))
    sweep = load_sweep(path)
    client = MlflowClient(tracking_uri)
    tags = {"htl.sweep": "count"}
    parent = tracking.start_run(tracking_uri, "count", "sweep", {"sweep.num_samples": 3},
                                {**tags, "htl.role": "sweep"})
    if sweep_ended:
        client.log_param(parent, "best.htl.lam", "1.5")
    for name, status, flag, epochs in (("done", "FINISHED", None, 8),
                                       ("cut", "KILLED", "htl.interrupted", 4),
                                       ("ghost", "KILLED", "htl.orphaned", 8)):
        run = tracking.start_run(tracking_uri, "count", name, {"train.epochs": 8},
                                 {**tags, "htl.role": "trial", "mlflow.parentRunId": parent,
                                  **({flag: "true"} if flag else {})})
        for step in range(epochs):
            tracking.log_metrics(tracking_uri, run, {"val/dice": 0.5}, step)
        client.set_terminated(run, status)
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))
    assert setting_status(sweep, tracking_uri).trials_finished == (2 if sweep_ended else 1)
    # no confirmation run yet: the setting's compute is a running total
    assert "; compute so far " in setting_section(sweep, tracking_uri, 1, print)[0]
