"""Ablations in a sweep file: parsed and checked before Ray starts, planned as the chosen
configuration with one thing changed, scored on val only. (Trained end to end, archived and
reported in tests/test_reproduce.py.)"""

from __future__ import annotations

import pytest
import yaml

from htl_ray.config import ConfigError
from htl_ray.tune.ablation import ablation_plan, ablation_run_name
from htl_ray.tune.space import load_sweep


def _write(tmp_path, ablations, **settings):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "overrides": ["train.epochs=3", "htl.method=htl", "htl.refresh_every=2"],
        "sweep": {"name": "s", **settings},
        "space": {"htl.lam": {"type": "float", "low": 0.5, "high": 4.0},
                  "htl.attention": {"type": "categorical", "choices": ["reweight", "oversample"]}},
        "ablations": ablations}))
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


def test_a_variant_that_changes_nothing_is_refused_by_name(tmp_path):
    # a key the sweep does not search, set to the base config's value: refused on reading
    with pytest.raises(ConfigError, match=r"ablations\.same: htl.refresh_every=2 changes "
                                          "nothing: the base config has it already"):
        load_sweep(_write(tmp_path, {"same": ["htl.refresh_every=2"]}))
    # a swept key: a no-op only if the sweep chose that value, so refused when planned
    sweep = load_sweep(_write(tmp_path, {"reweight": ["htl.attention=reweight"]}))
    assert ablation_plan(sweep, {"htl.lam": 1.0, "htl.attention": "oversample"},
                         sweep.base.to_dict())
    with pytest.raises(ConfigError, match="ablations.reweight: htl.attention=reweight is what "
                                          "the sweep chose already"):
        ablation_plan(sweep, {"htl.lam": 1.0, "htl.attention": "reweight"},
                      sweep.base.to_dict())


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
