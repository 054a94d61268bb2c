"""`htl-ray compare` on runs with known metrics in a real SQLite MLflow store."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from htl_ray import tracking
from htl_ray.cli import main
from htl_ray.compare import compare, load_runs, run_metrics

T2 = 4.302652729911275            # Student t, 97.5% quantile, 2 degrees of freedom


def _log_run(uri: str, method: str, lam: str, seed: int, dice: float, worst: list[float],
             status: str = "FINISHED") -> str:
    params = {"htl.method": method, "htl.lam": lam, "run.seed": seed,
              "run.name": f"{method}-{lam}-s{seed}", "train.epochs": 10}
    run_id = tracking.start_run(uri, "cmp", f"{method} s{seed}", params, {})
    metrics = {"best/val/dice": dice, "best/val/iou": dice - 0.1,
               "best/val/thresholded_jaccard": dice - 0.2,
               "val/dice": 0.0,                       # last epoch: must not be what is compared
               **{f"best/val/worst_group/attr{i}/dice": w for i, w in enumerate(worst)}}
    tracking.log_metrics(uri, run_id, metrics, step=0)
    tracking.end_run(uri, run_id, status)
    return run_id


@pytest.fixture
def runs_uri(tracking_uri):
    for seed, d in enumerate([0.80, 0.82, 0.84]):
        _log_run(tracking_uri, "erm", "1.0", seed, d, [d - 0.3, d - 0.1])
    for seed, d in enumerate([0.83, 0.86, 0.86]):
        _log_run(tracking_uri, "htl", "2.0", seed, d, [d - 0.2, d - 0.25])
    _log_run(tracking_uri, "htl", "4.0", 0, 0.70, [0.5])
    _log_run(tracking_uri, "htl", "4.0", 1, 0.10, [0.1], status="FAILED")   # not compared
    return tracking_uri


def test_run_metrics_prefer_the_best_epoch_and_take_the_worst_group():
    m = run_metrics({"best/val/dice": 0.8, "val/dice": 0.1,
                     "best/val/worst_group/a/dice": 0.6, "best/val/worst_group/b/dice": 0.4})
    assert m["dice"] == 0.8 and m["worst_group_dice"] == 0.4
    assert run_metrics({"val/dice": 0.7})["dice"] == 0.7       # runs without best/ metrics


def test_compare_means_cis_and_paired_differences(runs_uri):
    runs = load_runs(runs_uri, "cmp")
    assert len(runs) == 7                                        # the FAILED run is left out
    result = compare(runs)
    t = result.table.set_index("configuration")
    erm = t.loc["htl.lam=1 htl.method=erm"]
    htl = t.loc["htl.lam=2 htl.method=htl"]
    assert erm["n"] == 3 and erm["dice"] == pytest.approx(0.82)
    assert erm["dice_hi"] - erm["dice"] == pytest.approx(T2 * 0.02 / math.sqrt(3))
    assert htl["dice"] == pytest.approx(0.85)
    # paired by seed: diffs 0.03, 0.04, 0.02
    assert htl["pairs"] == 3 and htl["baseline"] == "htl.lam=1 htl.method=erm"
    assert htl["d_dice"] == pytest.approx(0.03)
    assert htl["d_dice_hi"] - htl["d_dice"] == pytest.approx(T2 * 0.01 / math.sqrt(3))
    assert htl["d_iou"] == pytest.approx(0.03)
    # worst group: erm min(d-0.3, d-0.1) = d-0.3; htl min(d-0.2, d-0.25) = d-0.25 → +0.08
    assert erm["worst_group_dice"] == pytest.approx(0.52)
    assert htl["d_worst_group_dice"] == pytest.approx(0.08)
    assert math.isnan(erm["d_dice"])                             # the baseline itself
    one = t.loc["htl.lam=4 htl.method=htl"]
    assert one["n"] == 1 and math.isnan(one["dice_lo"])          # one seed: no interval
    assert one["pairs"] == 1 and one["d_dice"] == pytest.approx(-0.10)
    assert "0.8500 [0.8" in result.markdown() and "+0.0300 [+0.0" in result.markdown()


def test_runs_differing_only_in_result_neutral_keys_are_seeds_of_one_configuration(
        tracking_uri):
    """A seed trained before `htl.scorer_start_timeout_s` existed never logged it, and a
    resumed sweep may raise `train.max_failures`: neither changes what was trained."""
    from htl_ray.config import RESULT_NEUTRAL_KEYS

    assert {"htl.scorer_start_timeout_s", "train.max_failures"} <= set(RESULT_NEUTRAL_KEYS)
    old = _log_run(tracking_uri, "loss", "1.0", 0, 0.80, [0.5])
    new = _log_run(tracking_uri, "loss", "1.0", 1, 0.84, [0.5])
    other = _log_run(tracking_uri, "loss", "3.0", 2, 0.70, [0.5])
    client = MlflowClient(tracking_uri)
    for run_id in (new, other):
        client.log_param(run_id, "htl.scorer_start_timeout_s", "600.0")
    client.log_param(old, "train.max_failures", "0")
    client.log_param(new, "train.max_failures", "3")
    client.log_param(other, "train.max_failures", "3")
    result = compare(load_runs(tracking_uri, "cmp"))
    table = result.table.set_index("configuration")
    assert sorted(table.index) == ["htl.lam=1", "htl.lam=3"]        # lam is all that differs
    assert table.loc["htl.lam=1", "n"] == 2
    assert table.loc["htl.lam=1", "dice"] == pytest.approx(0.82)
    assert not any("more than once" in note for note in result.notes)
    # the same seed again with another scorer timeout: one configuration, and said so
    again = _log_run(tracking_uri, "loss", "1.0", 1, 0.86, [0.5])
    client.log_param(again, "htl.scorer_start_timeout_s", "1200.0")
    result = compare(load_runs(tracking_uri, "cmp"))
    assert result.table.set_index("configuration").loc["htl.lam=1", "n"] == 3
    assert "htl.lam=1: seed(s) 1 ran more than once" in " ".join(result.notes)


def test_a_runs_data_is_its_fingerprint_not_the_path_it_lay_at(tracking_uri):
    """A seed trained on another machine (the data at another path, the same fingerprint) is a
    seed of the same configuration; the same path holding other data is not; a run without a
    fingerprint is told by its path."""
    from htl_ray.tracking.schema import DATASET_TAG

    client = MlflowClient(tracking_uri)
    where = {}
    aaa, bbb = "aaaa1111" * 8, "bbbb2222" * 8                 # sha256 digests: 64 digits
    for seed, (path, fingerprint) in enumerate([("/here/isic", aaa),
                                                ("/cluster/isic", aaa),
                                                ("/here/isic", bbb),
                                                ("/work/main/data/isic128", None),
                                                ("/work/main/data/isic-core128", None)]):
        run_id = _log_run(tracking_uri, "erm", "1.0", seed, 0.80 + seed / 100, [0.5])
        client.log_param(run_id, "data.path", path)
        if fingerprint:
            client.set_tag(run_id, DATASET_TAG, fingerprint)
        where[seed] = run_id
    result = compare(load_runs(tracking_uri, "cmp"))
    by_config = result.runs.groupby("configuration")["seed"].apply(sorted).to_dict()
    # a fingerprint shown by its first 12 digits; paths in full (they may share a start)
    assert by_config == {"data=aaaa1111aaaa": ["0", "1"], "data=bbbb2222bbbb": ["2"],
                         "data=/work/main/data/isic128": ["3"],
                         "data=/work/main/data/isic-core128": ["4"]}
    table = result.table.set_index("configuration")
    assert table.loc["data=aaaa1111aaaa", "dice"] == pytest.approx(0.805)


def test_compare_cli_prints_and_writes_markdown_and_csv(runs_uri, tmp_path, capsys):
    assert main(["compare", "cmp", "--tracking-uri", runs_uri, "--out",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "7 finished runs" in out and "3 configurations" in out
    assert "| htl.lam=2 htl.method=htl | 3 | 0.8500" in out
    csv = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert set(csv["configuration"]) == {"htl.lam=1 htl.method=erm",
                                         "htl.lam=2 htl.method=htl", "htl.lam=4 htl.method=htl"}
    assert (tmp_path / "out" / "compare.md").read_text().startswith("| configuration | n |")
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 7


def test_compare_errors_name_what_is_missing(runs_uri, capsys):
    assert main(["compare", "nope", "--tracking-uri", runs_uri]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err
    client = MlflowClient(runs_uri)
    assert client.get_experiment_by_name("cmp") is not None
    assert main(["compare", "cmp", "--tracking-uri", runs_uri, "--filter",
                 "params.`htl.method` = 'none'"]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_paired_images_differences_with_a_bootstrap_interval_over_images(tmp_path):
    import json

    import numpy as np

    from htl_ray.compare import paired_images, run_per_image
    from htl_ray.run_dir import META_FILE

    rng = np.random.default_rng(1)
    ids = [f"img{i}" for i in range(200)]
    b = pd.DataFrame({"dice": rng.uniform(0.5, 0.9, 200)}, index=ids)
    a = pd.DataFrame({"dice": b["dice"] + 0.02 + rng.normal(0, 0.01, 200)}, index=ids)
    t = paired_images(a.sample(frac=1, random_state=0), b, metrics=("dice",), n_boot=2000)
    r = t.iloc[0]
    assert r["diff"] == pytest.approx((a["dice"] - b["dice"]).mean())     # paired by id
    assert r["ci_low"] < r["diff"] < r["ci_high"] and 0.0 < r["ci_low"]
    assert r["ci_high"] - r["ci_low"] < 0.01 and r["images"] == 200
    assert r["better"] + r["worse"] == 200 and r["better"] > 180
    with pytest.raises(ValueError, match="different images .1 only in the first, 0 only"):
        paired_images(a, b.iloc[1:], metrics=("dice",))

    # a run directory: its best checkpoint's per-image table of the split
    run = tmp_path / "run"
    for name, dice, table in (("checkpoint_a", 0.7, b), ("checkpoint_b", 0.8, a)):
        (run / name).mkdir(parents=True)
        (run / name / META_FILE).write_text(json.dumps(
            {"epoch": int(name[-1] == "b"), "metrics": {"val/dice": dice}}))
        (run / name / "checkpoint.pt").write_bytes(b"")
        table.rename_axis("id").reset_index().to_parquet(run / name / "test_per_sample.parquet")
    (run / "htl_run.json").write_text(json.dumps(
        {"config": {"train": {"checkpoint_metric": "val/dice"}}}))
    assert run_per_image(run)["dice"].equals(a["dice"].rename_axis("id"))
    with pytest.raises(ValueError, match="val_per_sample.parquet missing: score the run on "
                                         "that split first with `htl-ray evaluate"):
        run_per_image(run, "val")


def test_load_runs_takes_a_typed_query_beside_the_users_own_filter(runs_uri):
    from htl_ray.tracking.queries import RunQuery

    htl = RunQuery(params={"htl.method": "htl"})
    runs = load_runs(runs_uri, "cmp", query=htl)
    assert sorted(runs["seed"]) == ["0", "0", "1", "2"]           # not the FAILED run
    assert list(load_runs(runs_uri, "cmp", "params.`htl.lam` = '4.0'", query=htl)["seed"]) \
        == ["0"]
    assert load_runs(runs_uri, "cmp", "params.`htl.lam` = '1.0'", query=htl).empty


def test_compare_cli_selects_a_sweeps_runs_of_one_role_by_their_tags(runs_uri, tmp_path,
                                                                      capsys):
    """--sweep and --role select by the schema's tags, a name with a quote included; --filter
    narrows further."""
    from htl_ray.tracking.schema import CONFIRM_ROLE, ROLE_TAG, SWEEP_TAG, TRIAL_ROLE

    client = MlflowClient(runs_uri)
    exp = client.get_experiment_by_name("cmp")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])
    for run, role in zip(runs[:3], [CONFIRM_ROLE, CONFIRM_ROLE, TRIAL_ROLE], strict=True):
        client.set_tag(run.info.run_id, SWEEP_TAG, "ben's sweep")
        client.set_tag(run.info.run_id, ROLE_TAG, role)
    out_dir = str(tmp_path / "o")
    assert main(["compare", "cmp", "--tracking-uri", runs_uri, "--sweep", "ben's sweep",
                 "--role", CONFIRM_ROLE, "--out", out_dir]) == 0
    assert "2 finished runs" in capsys.readouterr().out
    assert main(["compare", "cmp", "--tracking-uri", runs_uri, "--sweep", "ben's sweep",
                 "--out", out_dir]) == 0
    assert "3 finished runs" in capsys.readouterr().out
    seed = runs[0].data.params["run.seed"]
    assert main(["compare", "cmp", "--tracking-uri", runs_uri, "--sweep", "ben's sweep",
                 "--role", CONFIRM_ROLE, "--filter", f"params.`run.seed` = '{seed}'",
                 "--out", out_dir]) == 0
    assert "1 finished runs" in capsys.readouterr().out
