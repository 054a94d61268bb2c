"""The reproduction protocol run end to end (`htl_ray.protocol.runner`) on a tiny synthetic
setting (real Ray Tune sweep, real training runs, real MLflow store): results regenerated from
MLflow, finished runs skipped on a second pass, hand-written text around the generated block
kept; and the shipped protocol files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from htl_ray.archive import ORIGIN_TAG
from htl_ray.config import ConfigError
from htl_ray.protocol import run_protocol
from htl_ray.protocol.page import BEGIN, END


def _said(capsys) -> list[str]:
    """The protocol's progress lines printed since the last call (not its Ray workers')."""
    return [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("[htl-ray]")]


def test_protocol_runs_resumes_and_reports_from_mlflow(ray_cluster, synth_dataset, tmp_path,
                                                       tracking_uri, fresh_store, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "overrides": [f"data.path={synth_dataset}", f"tracking.uri={tracking_uri}",
                      "tracking.experiment=repro", "train.epochs=2", "data.limit_train=16",
                      "data.batch_size=8", "model.decoder_channels=[16,8,8,4,4]",
                      "scaling.num_workers=1", "scaling.resources_per_worker={CPU: 1}",
                      "htl.method=htl", "htl.refresh_every=1", "htl.warmup_epochs=1",
                      "htl.asynchronous=false"],
        "sweep": {"name": "tiny-repro", "num_samples": 1, "max_concurrent": 1,
                  "storage_path": str(tmp_path / "sweeps"), "comparators": ["erm"]},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 2.0}},
        "ablations": {"refresh-every-2": ["htl.refresh_every=2"]},
    }))
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nwritten by hand\n")
    assert run_protocol([sweep_file], seeds=1, results=page, report_only=True) is False
    assert "*Not started.*" in page.read_text() and "0 of 1 trials" in page.read_text()

    _said(capsys)
    archive = tmp_path / "archive"
    # one seed per method and ERM alone beside HTL keep this test short (every training run
    # costs about 30 s of start-up): intervals, the placebo's columns and the verdict against
    # both baselines are tested with known numbers in test_protocol_page.py and
    # test_analysis_stats.py; without its ablations first: the protocol is complete once the
    # verdict's runs are
    with pytest.raises(ConfigError, match="--external: .*missing dataset manifest"):
        run_protocol([sweep_file], seeds=1, results=page, externals=[tmp_path])
    # the synthetic set's own test split stands in for another site's test-only dataset
    assert run_protocol([sweep_file], seeds=1, results=page, archive=archive,
                        ablate=False, externals=[synth_dataset]) is True
    lines = _said(capsys)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("repro")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    assert not any(r.data.tags.get("htl.role") == "ablation" for r in runs)
    assert "ablation runs (val only) 0 of 1" in page.read_text()
    assert "*Ablations not run (`--no-ablations`)" in page.read_text()
    confirm = [r for r in runs if r.data.tags.get("htl.role") == "confirm"]
    assert len([r for r in runs if r.data.tags.get("htl.role") == "trial"]) == 1
    assert sorted((r.data.params["htl.method"], r.data.params["run.seed"]) for r in confirm) \
        == [("erm", "0"), ("htl", "0")]
    # the ERM run got the lambda the sweep chose for HTL
    assert len({r.data.params["htl.lam"] for r in confirm}) == 1
    test_lam = confirm[0].data.params["htl.lam"]
    assert all("best/test/dice" in r.data.metrics for r in confirm)
    # scored on the external dataset too (named by its folder), equal to its own test split
    assert all(r.data.metrics["external/ds/dice"] == pytest.approx(
        r.data.metrics["best/test/dice"], abs=1e-6) for r in confirm)
    assert "External test-only dataset `ds`" in page.read_text()

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
    # then the per-group tables (test split, the external dataset), then the ablations'
    assert list(rows)[:3] == ["htl", "erm", "group"] and "variant" in rows
    assert header[:6] == ["method", "seeds", "dice", "iou", "thresholded_jaccard",
                          "worst_group_dice"]
    # the table's numbers are the runs' test metrics, Δ = paired difference in points
    test = {r.data.params["htl.method"]: r.data.metrics for r in confirm}
    assert rows["htl"][2] == f"{test['htl']['best/test/dice']:.3f}"        # 1 seed: no CI
    assert rows["erm"][4] == f"{test['erm']['best/test/thresholded_jaccard']:.3f}"
    key = "best/test/dice"
    assert rows["htl"][header.index("ΔDice vs ERM")] == \
        f"{100 * (test['htl'][key] - test['erm'][key]):+.1f}"
    key = "best/test/thresholded_jaccard"
    assert rows["htl"][header.index("Δthr-J vs ERM")] == \
        f"{100 * (test['htl'][key] - test['erm'][key]):+.1f}"
    assert rows["erm"][header.index("Δthr-J vs ERM")] == "–"
    assert not any("random" in h for h in header)          # no placebo in this protocol
    assert "HTL − ERM, thresholded Jaccard:" in block and "HTL − ERM, Dice:" in block
    report_html = tmp_path / "sweeps" / "tiny-repro" / "report" / "report.html"
    assert report_html.is_file()
    # the page follows the protocol: rewritten after each of the 2 confirmation runs, and last
    assert sum("results written to" in line for line in lines) == 3
    built = report_html.stat().st_mtime_ns

    # with its ablations (the default): the verdict's runs are skipped, the variant trains,
    # scored on val only, and the page pairs it by seed with the chosen config and ERM
    assert run_protocol([sweep_file], seeds=1, results=page, archive=archive) is True
    lines = _said(capsys)
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
    assert run_protocol([sweep_file], seeds=1, results=page, archive=archive) is True
    lines = _said(capsys)
    assert len(client.search_runs([exp.experiment_id])) == n_runs
    assert any("tiny-repro complete, skipped" in line for line in lines)
    assert not any("ablations" in line for line in lines)          # nor its ablations
    assert page.read_text().count(BEGIN) == 1
    assert page.read_text().split(BEGIN)[1].split("Generated")[1].split("\n", 1)[1] == \
        text.split(BEGIN)[1].split("Generated")[1].split("\n", 1)[1]   # same page, same table
    assert report_html.stat().st_mtime_ns == built     # the runs did not change: report reused

    # another machine, a later sitting: a fresh MLflow store and sweep directory, and the
    # archive as committed by a sitting that had not yet finished the ERM run
    records = {f: json.loads(f.read_text()) for f in (archive / "tiny-repro").glob("*.json")}
    assert sorted(r["tags"]["htl.role"] for r in records.values()) == \
        ["ablation", "confirm", "confirm", "sweep", "trial"]
    erm = next(f for f, r in records.items() if r["tags"].get("htl.group") == "erm")
    erm.unlink()
    elsewhere = fresh_store(tmp_path / "elsewhere.db")
    moved = [f"tracking.uri={elsewhere}", f"sweep.storage_path={tmp_path / 'elsewhere'}"]
    page2 = tmp_path / "results2.md"
    assert run_protocol([sweep_file], seeds=1, results=page2, overrides=moved,
                        archive=archive) is True
    lines = _said(capsys)
    assert any("4 run(s) of tiny-repro imported" in line for line in lines)
    assert not any("ablations" in line for line in lines)   # imported, counted, not retrained
    assert any("sweep tiny-repro was run elsewhere" in line for line in lines)
    client2 = MlflowClient(elsewhere)
    runs2 = client2.search_runs([client2.get_experiment_by_name("repro").experiment_id])
    trained = [r for r in runs2 if ORIGIN_TAG not in r.data.tags]
    assert [(r.data.tags["htl.role"], r.data.params["htl.method"], r.info.status)
            for r in trained] == [("confirm", "erm", "FINISHED")]        # only what was missing
    assert len(runs2) == 5 and trained[0].data.params["htl.lam"] == test_lam
    # ... and archived in turn, under its own run id, nested under the sweep's original id
    retrained = json.loads((archive / "tiny-repro" / f"{trained[0].info.run_id}.json")
                           .read_text())
    parent_origin = next(r["run_id"] for r in records.values()
                         if r["tags"]["htl.role"] == "sweep")
    assert retrained["tags"]["mlflow.parentRunId"] == parent_origin
    assert len(list((archive / "tiny-repro").glob("*.json"))) == 5
    text2 = page2.read_text()
    assert "**Complete.**" in text2 and "1 of 1 trials finished" in text2
    assert "compute so far" not in text2 and "; compute " in text2
    rows2 = {r.split("|")[1].strip(): r for r in text2.splitlines() if r.startswith("| ")}
    assert rows2["htl"] == next(r for r in table if r.split("|")[1].strip() == "htl")
    assert rows2["refresh-every-2"] == next(r for r in text.splitlines()
                                            if r.startswith("| refresh-every-2 "))
    assert "its enrichment table came with the archive" in text2


ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "experiments" / "reproduce"


def _variants_differ(sweep) -> bool:
    """Every ablation trains something the sweep's base configuration does not."""
    from htl_ray.tune.ablation import same_as_chosen

    return not same_as_chosen(sweep, {})


def test_protocol_files_shipped_are_valid():
    """One file per supervision setting, each comparing every attention method of the
    registry and plain ERM with the tuned HTL on the data `make reproduce` prepares, scored on
    test, and trying the same ablations, each a real change of the configuration."""
    from htl_ray.htl.attention import METHODS
    from htl_ray.supervision.settings import SETTINGS
    from htl_ray.tune.space import load_sweep
    from htl_ray.tune.sweep import VERDICT_GROUPS

    sweeps = {p.stem: load_sweep(p) for p in sorted(PROTOCOL.glob("*.yaml"))}
    assert set(sweeps) == set(SETTINGS)
    # round one's five methods (tta and entropy came with round 2, below)
    compared = {"htl", "random", "loss", "el2n", "erm"}
    assert compared - {"erm"} < {m.name for m in METHODS.values() if m.score_column}
    makefile = (ROOT / "Makefile").read_text()
    for name, sweep in sweeps.items():
        base = sweep.base
        assert base.supervision.setting == name
        # the issue's five methods in every setting (semi: loss/EL2N against pseudo-labels)
        assert base.htl.method == "htl"
        assert {"htl", *sweep.settings.comparators} == compared, name
        assert set(VERDICT_GROUPS) - {"best"} <= set(sweep.settings.comparators)
        assert f"{base.data.path}/manifest.json" in makefile and base.train.evaluate_test
        # on 2 cores a background refresh lags several epochs: attention must start on time
        assert base.htl.asynchronous is False
        assert base.htl.scorer_threads == 2          # the waiting trainers' cores too
        assert base.train.max_failures >= 1          # hours unattended: workers get lost
        # what the sweep keeps fixed is tried afterwards, on val, the same in every setting
        assert sweep.ablations == sweeps["supervised"].ablations and sweep.ablations
        assert _variants_differ(sweep) and sweep.settings.ablation_seeds >= 1
        assert not set(sweep.space) & {o.split("=")[0] for v in sweep.ablations.values()
                                        for o in v}      # never a key the search tunes
    assert sweeps["semi"].base.supervision.label_fraction < 1      # unlabelled images
    assert len({s.settings.name for s in sweeps.values()}) == len(sweeps)


def test_gpu_variant_overrides_every_setting_and_report_only_trains_nothing(
        tmp_path, monkeypatch, capsys):
    """The documented GPU-scale command line, with --report-only: configs valid, nothing run."""
    from htl_ray.cli import main
    from htl_ray.config import read_yaml_list
    from htl_ray.tune.space import load_sweep

    overrides = read_yaml_list(PROTOCOL / "gpu" / "overrides.yaml", "overrides")
    for name in ("supervised", "weak", "semi"):
        cpu = load_sweep(PROTOCOL / f"{name}.yaml")
        sweep = load_sweep(PROTOCOL / f"{name}.yaml", overrides)
        base = sweep.base
        assert base.data.path.endswith("isic256") and base.scaling.use_gpu
        assert base.supervision.setting == name and base.train.epochs > cpu.base.train.epochs
        # the GPU base refreshes at another interval: the variants still differ from it
        assert base.htl.refresh_every != cpu.base.htl.refresh_every
        assert _variants_differ(sweep) and len(sweep.ablations) == len(cpu.ablations)
        assert sweep.settings.ablation_seeds > cpu.settings.ablation_seeds
        assert base.htl.asynchronous and base.htl.scorer_gpus > 0
        assert base.htl.scorer_threads == 0                # trainers run beside the scorer
    page = tmp_path / "gpu.md"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["reproduce", str(PROTOCOL / "supervised.yaml"), str(PROTOCOL / "semi.yaml"),
                 "--report-only", "--results", str(page),
                 "--set-from", str(PROTOCOL / "gpu" / "overrides.yaml"),
                 "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 "--set", f"sweep.storage_path={tmp_path / 'sweeps'}"]) == 0
    assert "reproduction protocol in progress" in capsys.readouterr().out
    text = page.read_text()
    assert "0.0 compute hours so far. **In progress**" in text
    assert text.count("*Not started.*") == 2
    # the command that regenerates it, overrides spelled out
    assert "--set data.path=/mnt/shared/data/isic256" in text
    assert "--set 'scaling.resources_per_worker={CPU: 4, GPU: 0.75}'" in text
    assert "### semi: sweep `reproduce-semi`" in text and not (tmp_path / "sweeps").exists()


def test_round_two_files_ask_the_issues_questions():
    """experiments/reproduce/round2: in the weak setting ERM, HTL, TTA, loss, EL2N and the
    placebo at round one's chosen configuration, plus the best down-weighting variant (λ < 0)
    chosen on val, with 6 seeds (make reproduce-round2); in the supervised setting TTA and the
    down-weighting variant against round one's ERM, HTL and placebo, 3 seeds; round one's runs
    of those groups reused; its own sweep names."""
    from htl_ray.tune.space import load_sweep

    round1 = {p.stem: load_sweep(p) for p in sorted(PROTOCOL.glob("*.yaml"))}
    round2 = {p.stem: load_sweep(p) for p in sorted((PROTOCOL / "round2").glob("*.yaml"))}
    assert set(round2) == {"weak", "supervised", "transfer"}
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("reproduce-round2:")[1].split("\n\n")[0]
    assert "--seeds 6" in recipe and "--block round2" in recipe and "round2/archive" in recipe
    for name, groups, seeds in (("weak", {"tta", "loss", "el2n"}, 6), ("supervised", {"tta"}, 3)):
        sweep, first = round2[name], round1[name]
        groups |= {"htl", "erm", "random", "random-up"}
        assert sweep.settings.name not in {s.settings.name for s in round1.values()}
        assert set(sweep.comparator_groups) == groups and sweep.confirm_seeds(6) == seeds
        # the search is over down-weighting only: every λ it can sample is in (−1, 0)
        lam = sweep.space["htl.lam"]
        assert -1 < lam.low < lam.high < 0
        # the comparators keep round one's chosen configuration, but best's placebo (random)
        # takes best's own λ: the same down-weighting on a random set
        chosen = {k.removeprefix("best."): v for k, v in _round_one_best(first).items()}
        for group, extra in sweep.comparator_groups.items():
            cfg = sweep.config_for({"htl.lam": -0.5, "htl.method": "tta"}, extra)
            assert cfg.htl.method == group.removesuffix("-up")
            assert str(cfg.htl.lam) == ("-0.5" if group == "random" else chosen["htl.lam"])
            assert (str(cfg.htl.q), cfg.htl.attention) == (chosen["htl.q"],
                                                           chosen["htl.attention"])
        assert sweep.reuse.sweep_file.resolve() == first.path.resolve()
        assert sweep.reuse.groups == {"htl": "best", "erm": "erm", "random-up": "random",
                                      **({"loss": "loss", "el2n": "el2n"} if name == "weak"
                                         else {})}


def test_round_two_transfer_trains_without_msk4_and_scores_every_run_on_it():
    """Question 4 (experiments/reproduce/round2/transfer.yaml): the weak setting on the core
    data (MSK-4 dropped at ingest), every confirmation run also scored on MSK-4 alone
    (--external), configurations fixed to what round 2 and round one chose on val."""
    from htl_ray.tune.space import load_sweep

    sweep = load_sweep(PROTOCOL / "round2" / "transfer.yaml")
    weak = load_sweep(PROTOCOL / "round2" / "weak.yaml")
    assert sweep.base.data.path.endswith("data/isic-core128") and sweep.reuse is None
    assert sweep.base.supervision.setting == "weak" and sweep.settings.num_samples == 1
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("reproduce-round2-transfer:")[1].split("\n\n")[0]
    assert "--external data/isic-msk4-128" in recipe and "--block round2-transfer" in recipe
    assert "--seeds 3" in recipe and "round2/archive" in recipe
    # the two datasets are one folder split by the same selection: held out, then alone
    held_out = makefile.split("HELD_OUT := ")[1].split("\n")[0]
    core = makefile.split("data/isic-core128/manifest.json:")[1].split("\ndata/")[0]
    msk4 = makefile.split("data/isic-msk4-128/manifest.json:")[1].split("\nreproduce")[0]
    assert "--drop $(HELD_OUT)" in core and "--keep $(HELD_OUT) --all-test" in msk4
    assert held_out == "'lesion_id=MSK4_*'"
    # no search: the one choice is round2-weak's chosen variant; the rest round one's choice
    lam = sweep.space["htl.lam"]
    assert list(lam.choices) == [float(_round_one_best(weak)["best.htl.lam"])]
    assert _round_one_best(weak)["best.htl.method"] == sweep.base.htl.method == "htl"
    assert set(sweep.comparator_groups) == {"erm", "htl", "tta"}
    assert sweep.confirm_seeds(6) == 3
    for group, extra in sweep.comparator_groups.items():
        cfg = sweep.config_for({"htl.lam": lam.choices[0]}, extra)
        assert cfg.htl.method == group and cfg.htl.lam == weak.base.htl.lam
        assert (cfg.htl.q, cfg.htl.sparsities) == (weak.base.htl.q, weak.base.htl.sparsities)


def _round_one_best(sweep) -> dict[str, str]:
    """The chosen configuration a round's archive records on its sweep's parent run."""
    archive = PROTOCOL / ("round2/archive" if sweep.settings.name.startswith("round2")
                          else "archive")
    for path in (archive / sweep.settings.name).glob("*.json"):
        record = json.loads(path.read_text())
        if record["tags"].get("htl.role") == "sweep":
            return {k: v for k, v in record["params"].items() if k.startswith("best.")}
    raise AssertionError(f"no archived parent run of {sweep.settings.name}")
