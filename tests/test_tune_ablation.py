"""Ablations in a sweep file: parsed and checked before Ray starts, planned as the chosen
configuration with one thing changed, scored on val only; counted and paired by seed from a
real MLflow store. (Trained end to end, archived and reported in tests/test_protocol_runner.py.)"""

from __future__ import annotations

import pytest
import yaml

from htl_ray.config import ConfigError
from htl_ray.tune.ablation import (
    ablation_plan,
    ablation_run_name,
    matches_variant,
    same_as_chosen,
)
from htl_ray.tune.space import load_sweep


def _write(tmp_path, ablations, **settings):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": ["train.epochs=3", "htl.method=htl", "htl.refresh_every=2"],
        "sweep": {"name": "s", **settings},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0},
                  "htl.attention": {"type": "categorical", "choices": ["reweight", "oversample"]}},
        "ablations": ablations}, sort_keys=False))
    return path


def test_variants_are_the_chosen_config_with_their_overrides_on_val_only(tmp_path):
    sweep = load_sweep(_write(tmp_path, {"refresh-every-1": ["htl.refresh_every=1"],
                                         "soft": ["htl.weighting=soft", "htl.lam=1.0"]},
                              ablation_seeds=2))
    assert sweep.ablations == {"refresh-every-1": ["htl.refresh_every=1"],
                               "soft": ["htl.weighting=soft", "htl.lam=1.0"]}
    best = {"htl.lam": 2.5, "htl.attention": "oversample"}
    base_raw = sweep.base.to_dict()
    plan = ablation_plan(sweep, best, base_raw)
    assert [(name, group, seed) for name, group, seed, _ in plan] == [
        ("ablation-refresh-every-1-s0", "refresh-every-1", 0),
        ("ablation-refresh-every-1-s1", "refresh-every-1", 1),
        ("ablation-soft-s0", "soft", 0), ("ablation-soft-s1", "soft", 1)]
    chosen = sweep.config_for(best, ["run.seed=1"], base_raw).flat()
    variant = plan[1][3].flat()
    # only the variant's override, the seed's name and the val-only scoring differ
    assert {k for k in chosen if chosen[k] != variant[k]} == {
        "htl.refresh_every", "run.name", "train.evaluate_test"}
    assert variant["htl.refresh_every"] == 1 and variant["train.evaluate_test"] is False
    assert variant["run.seed"] == 1 and variant["run.name"] == ablation_run_name(
        "refresh-every-1", 1)
    assert variant["htl.attention"] == "oversample"       # what the sweep chose is kept
    soft = plan[2][3]
    assert soft.htl.weighting == "soft" and soft.htl.lam == 1.0   # a variant may set λ too
    assert base_raw == sweep.base.to_dict()                          # left untouched


def test_a_variant_that_changes_nothing_is_refused_or_left_out(tmp_path):
    # a key the sweep does not search, set to the base config's value: refused on reading
    with pytest.raises(ConfigError, match=r"ablations\.same: htl.refresh_every=2 changes "
                                          "nothing: the base config has it already"):
        load_sweep(_write(tmp_path, {"same": ["htl.refresh_every=2"]}))
    # a searched key: the same only if the search chose that value; then there is nothing to
    # train (the confirmation runs are that variant), and the other variants still run
    sweep = load_sweep(_write(tmp_path, {"reweight": ["htl.attention=reweight"],
                                         "r1": ["htl.refresh_every=1"]}))
    oversample = {"htl.lam": 1.0, "htl.attention": "oversample"}
    reweight = {"htl.lam": 1.0, "htl.attention": "reweight"}
    assert same_as_chosen(sweep, oversample) == [] and same_as_chosen(sweep, reweight) == [
        "reweight"]
    assert [g for _, g, _, _ in ablation_plan(sweep, oversample, sweep.base.to_dict())] == [
        "reweight", "r1"]
    assert [g for _, g, _, _ in ablation_plan(sweep, reweight, sweep.base.to_dict())] == ["r1"]


def test_a_run_is_a_variants_only_with_the_variants_values_as_the_file_names_them_now(
        tmp_path):
    sweep = load_sweep(_write(tmp_path, {"r1": ["htl.refresh_every=1"],
                                         "soft": ["htl.weighting=soft", "htl.lam=1.0"]}))
    logged = {k: str(v) for k, v in sweep.config_for(
        {"htl.lam": 2.0, "htl.attention": "reweight"}, ["htl.refresh_every=1"]).flat().items()}
    assert matches_variant(sweep, "r1", logged)
    assert not matches_variant(sweep, "r1", {**logged, "htl.refresh_every": "4"})  # edited
    assert not matches_variant(sweep, "gone", logged)                 # dropped from the file
    assert not matches_variant(sweep, "soft", logged)                 # hard weights, λ 2
    assert matches_variant(sweep, "soft", {**logged, "htl.weighting": "soft", "htl.lam": "1.0"})


def test_command_line_overrides_add_replace_and_drop_variants(tmp_path):
    path = _write(tmp_path, {"r1": ["htl.refresh_every=1"], "r4": ["htl.refresh_every=4"]})
    sweep = load_sweep(path, ["ablations.r4=null", "ablations.r8=[htl.refresh_every=8]",
                              "ablations.r1=[htl.refresh_every=1, htl.beta=0.9]",
                              "htl.refresh_every=4"])
    assert sweep.ablations == {"r1": ["htl.refresh_every=1", "htl.beta=0.9"],
                               "r8": ["htl.refresh_every=8"]}
    assert sweep.base.htl.refresh_every == 4        # the base override is not an ablation
    # ... so with refresh every 4 in the base, the r4 variant would change nothing
    with pytest.raises(ConfigError, match=r"ablations\.r4: .* changes nothing"):
        load_sweep(path, ["htl.refresh_every=4"])
    with pytest.raises(ConfigError, match="ablations.r2=null: .* has no ablation 'r2' to drop "
                                          r"\(it has: r1, r4\)"):
        load_sweep(path, ["ablations.r2=null"])


@pytest.mark.parametrize("ablations, message", [
    (["htl.refresh_every=1"], "ablations: expected a mapping of variant names"),
    ({"Refresh 1": ["htl.refresh_every=1"]}, "variant name 'Refresh 1': expected lower-case"),
    ({"r1": "htl.refresh_every=1"}, r"ablations\.r1: expected a non-empty list of key=value"),
    ({"r1": []}, r"ablations\.r1: expected a non-empty list"),
    ({"r1": ["htl.refresh_every"]}, r"ablations\.r1: expected a non-empty list of key=value"),
    ({"erm": ["htl.method=erm"]}, r"ablations\.erm: a variant changes how .* not its method"),
    ({"s1": ["run.seed=1"]}, r"ablations\.s1: .*seed"),
    ({"fast": ["htl.scorer_threads=4"]}, r"ablations\.fast: .*speed"),
    ({"test": ["train.evaluate_test=false"]}, r"ablations\.test: .*test scoring"),
    ({"store": ["tracking.experiment=x"]}, r"ablations\.store: .*tracking"),
    ({"r0": ["htl.refresh_every=0"]}, r"ablations\.r0: .*htl\.refresh_every"),
    ({"typo": ["htl.refresh_evry=1"]}, r"ablations\.typo: .*refresh_evry"),
])
def test_bad_ablations_are_refused_when_the_file_is_read(tmp_path, ablations, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, ablations))


def test_ablation_seeds_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="sweep.ablation_seeds: expected a positive integer"):
        load_sweep(_write(tmp_path, {"r1": ["htl.refresh_every=1"]}, ablation_seeds=0))


def test_a_sweep_file_without_ablations_has_none(tmp_path):
    sweep = load_sweep(_write(tmp_path, None))
    assert sweep.ablations == {} and ablation_plan(
        sweep, {"htl.lam": 1.0, "htl.attention": "reweight"}, sweep.base.to_dict()) == []


def _run(uri, name, tags, params, metrics, status="FINISHED"):
    from mlflow.tracking import MlflowClient

    from htl_ray import tracking

    run_id = tracking.start_run(uri, "abl", name, params, {"htl.sweep": "s", **tags})
    if metrics:
        tracking.log_metrics(uri, run_id, metrics, 0)
    MlflowClient(uri).set_terminated(run_id, status)
    return run_id


def test_status_and_table_count_distinct_seeds_of_the_variant_as_named_now(tmp_path,
                                                                            tracking_uri):
    """Real MLflow store: a seed trained twice counts once, a run of the variant's earlier
    values not at all, a variant the sweep chose has nothing to train, and Δ pairs by seed."""
    import json

    from scipy import stats

    from htl_ray.protocol.page import ablation_lines
    from htl_ray.protocol.status import setting_status
    from htl_ray.tune.child_runs import finished_elsewhere
    from htl_ray.tune.state import STATE_FILE

    path = _write(tmp_path, {"r1": ["htl.refresh_every=1"], "soft": ["htl.weighting=soft"],
                             "reweight": ["htl.attention=reweight"]}, ablation_seeds=2,
                  storage_path=str(tmp_path / "sweeps"))
    sweep = load_sweep(path, [f"tracking.uri={tracking_uri}", "tracking.experiment=abl"])
    best = {"htl.lam": 1.5, "htl.attention": "reweight"}
    parent = _run(tracking_uri, "sweep s", {"htl.role": "sweep"},
                  {"best.htl.lam": "1.5", "best.htl.attention": "reweight"}, {})
    sweep.directory.mkdir(parents=True)
    (sweep.directory / STATE_FILE).write_text(json.dumps({"parent_run_id": parent}))

    def child(role, group, seed, dice, extra=(), method="htl"):
        scored = ["train.evaluate_test=false"] if role == "ablation" else []
        cfg = sweep.config_for(best, [*extra, *scored, f"htl.method={method}",
                                      f"run.seed={seed}"])
        metrics = {"best/val/dice": dice, "best/val/thresholded_jaccard": dice - 0.1}
        if role == "confirm":
            metrics["best/test/dice"] = dice
        return _run(tracking_uri, f"{group} s{seed}", {
            "htl.role": role, "htl.group": group, "mlflow.parentRunId": parent},
            {k: str(v) for k, v in cfg.flat().items()}, metrics)

    chosen = {0: 0.80, 1: 0.82, 2: 0.81}
    for seed, dice in chosen.items():
        child("confirm", "best", seed, dice)
    for seed, dice in {0: 0.79, 1: 0.80}.items():                 # ERM seed 2 not yet run
        child("confirm", "erm", seed, dice, method="erm")
    r1 = {seed: child("ablation", "r1", seed, dice, ["htl.refresh_every=1"])
          for seed, dice in {1: 0.84, 2: 0.82}.items()}
    child("ablation", "r1", 2, 0.82, ["htl.refresh_every=1"])  # seed 2 again, elsewhere
    child("ablation", "r1", 0, 0.70, ["htl.refresh_every=4"])   # r1's values before an edit
    child("ablation", "soft", 0, 0.78, ["htl.weighting=soft"])
    _run(tracking_uri, "soft s1", {"htl.role": "ablation", "htl.group": "soft",
                                   "mlflow.parentRunId": parent}, {}, {}, "FAILED")

    status = setting_status(sweep, tracking_uri)
    assert status.confirm_finished == {"best": 3, "erm": 2}
    assert status.ablation_finished == {"r1": 2, "soft": 1}
    assert status.ablations_same == ["reweight"]        # the sweep chose reweighting
    assert not status.ablations_complete(sweep)         # soft lacks seed 1
    status.ablation_finished["soft"] = 2
    assert status.ablations_complete(sweep)             # "reweight" has nothing to train
    status.ablation_finished["soft"] = 1

    lines = ablation_lines(sweep, tracking_uri, status)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in lines[2].splitlines()[2:]}
    assert rows["chosen (confirmation runs)"][2:4] == ["3", "0.810 [0.785, 0.835]"]
    # r1 − chosen on seeds 1 and 2: +2 and +1 points; t interval with 1 degree of freedom
    half = stats.t.ppf(0.975, 1) * 0.7071068 / 2 ** 0.5
    assert rows["r1"][1:4] == ["`htl.refresh_every=1`", "2", "0.830 [0.703, 0.957]"]
    assert rows["r1"][4] == f"+1.5 [{1.5 - half:+.1f}, {1.5 + half:+.1f}]"
    assert rows["r1"][6] == "+4.0 (1 of 2 seeds paired)"   # ERM has seed 1 only: 0.84 − 0.80
    assert rows["soft"][2:5] == ["1", "0.780", "-2.0"]
    assert rows["reweight"][2:5] == ["0", "= chosen", "(the sweep chose it)"]
    assert lines[-2] == "*Ablations incomplete: the rows above cover the runs finished so far.*"
    assert "Yardstick: the chosen configuration's val Dice ranges 0.800–0.820 over its 3 " \
           "seeds." in lines

    # the protocol keeps a finished (imported) run of the planned variant, and refuses one
    # whose values differ instead of counting it as the variant's
    base_raw = sweep.base.to_dict()
    plan = {planned.name: planned for planned in ablation_plan(sweep, best, base_raw)}

    def finished(name):
        return finished_elsewhere(sweep, plan[name], parent_run_id=parent, role="ablation")

    assert finished("ablation-r1-s1") == r1[1]
    assert finished("ablation-soft-s1") is None                      # failed: train it
    with pytest.raises(ConfigError, match=r"ablation-r1-s0, finished elsewhere\) was trained "
                                          r"with another configuration .*htl.refresh_every"):
        finished("ablation-r1-s0")
