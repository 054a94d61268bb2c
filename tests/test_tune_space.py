"""Sweep files: search spaces as Optuna distributions, checked before Ray starts."""

from __future__ import annotations

import re

import optuna.distributions as od
import pytest
from sweep_files import write_sweep

from htl_ray.config import ConfigError
from htl_ray.tune.space import load_sweep


def test_space_becomes_optuna_distributions_and_trial_overrides(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "htl.refresh_every": {"type": "int", "low": 1, "high": 3},
        "htl.attention": {"type": "categorical", "choices": ["reweight", "oversample"]},
        "htl.sparsities": {"type": "categorical", "choices": [[0.3, 0.5], [0.5, 0.7, 0.9]]},
    }))
    assert sweep.space["train.lr"] == od.FloatDistribution(1e-4, 1e-2, log=True)
    assert sweep.space["htl.refresh_every"] == od.IntDistribution(1, 3)
    # list choices reach Optuna as JSON text (storable) and come back as lists
    assert sweep.space["htl.sparsities"].choices == ("[0.3, 0.5]", "[0.5, 0.7, 0.9]")
    cfg = sweep.config_for({"train.lr": 0.003, "htl.refresh_every": 2,
                            "htl.attention": "oversample", "htl.sparsities": "[0.5, 0.7, 0.9]"})
    assert cfg.train.lr == 0.003 and cfg.htl.refresh_every == 2
    assert cfg.htl.attention == "oversample" and cfg.htl.sparsities == [0.5, 0.7, 0.9]
    assert cfg.train.epochs == 3                                     # the sweep's overrides


def test_command_line_overrides_reach_the_base_config_and_the_sweep_settings(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}}),
                       ["train.lr=0.01", "sweep.num_samples=3", "sweep.scheduler=asha"])
    assert sweep.base.train.lr == 0.01 and sweep.base.train.epochs == 3
    assert sweep.settings.num_samples == 3 and sweep.settings.scheduler == "asha"


def test_max_sparsity_sets_evenly_spaced_levels(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"htl.max_sparsity": {"type": "float", "low": 0.5,
                                                              "high": 0.9}}))
    assert len(sweep.base.htl.sparsities) == 3
    assert sweep.config_for({"htl.max_sparsity": 0.9}).htl.sparsities == [0.3, 0.6, 0.9]


@pytest.mark.parametrize("space, sweep, message", [
    ({"htl.lamda": {"type": "float", "low": 0, "high": 1}}, None, "space.htl.lamda: not a config"),
    ({"htl.lam": {"type": "float", "low": 2, "high": 1}}, None, "expected low < high"),
    ({"htl.lam": {"type": "gauss"}}, None, "space.htl.lam.type"),
    ({"htl.lam": {"type": "float", "low": 0}}, None, "missing 'high'"),
    ({"htl.q": {"type": "float", "low": 0.0, "high": 0.5}}, None, "htl.q"),   # q must be > 0
    ({"htl.lam": {"type": "float", "low": 0, "high": 1}}, {"mode": "up"}, "sweep.mode"),
    ({"htl.lam": {"type": "float", "low": 0, "high": 1}}, {"scheduler": "pbt"},
     "sweep.scheduler"),
    ({"htl.lam": {"type": "float", "low": 0, "high": 1}}, {"num_sample": 3},
     "sweep.num_sample: unknown key"),
    ({"htl.lam": {"type": "float", "low": 0, "high": 1}}, {"comparators": ["erm", "placebo"]},
     "sweep.comparators: expected a list of distinct htl.method values"),
    ({"htl.lam": {"type": "float", "low": 0, "high": 1}}, {"comparators": ["erm", "erm"]},
     "sweep.comparators"),
])
def test_bad_sweep_files_name_the_key(tmp_path, space, sweep, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_sweep(write_sweep(tmp_path, space, sweep))


def test_missing_base_and_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="base: config file not found: nope.yaml"):
        load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                          base="nope.yaml"))


def test_every_corner_of_the_shipped_sweep_space_is_a_valid_configuration():
    """Each value at the ends of each range (and each choice) of experiments/sweep_htl.yaml
    makes a config the trials can train: a sweep never fails on a value it samples."""
    from pathlib import Path

    import optuna.distributions as od

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "experiments" / "sweep_htl.yaml")
    assert sweep.space and sweep.base.htl.method != "erm"       # it tunes an attending method
    corners: dict[str, list] = {}
    for key, dist in sweep.space.items():
        corners[key] = list(dist.choices) if isinstance(dist, od.CategoricalDistribution) \
            else [dist.low, dist.high]
    for i in range(max(len(v) for v in corners.values())):
        params = {k: v[i % len(v)] for k, v in corners.items()}
        cfg = sweep.config_for(params, ["run.name=corner"])
        assert cfg.htl.method == sweep.base.htl.method
        for key in params.keys() & cfg.flat().keys():
            assert cfg.flat()[key] == params[key], key


def test_comparators_are_methods_that_fit_the_setting(tmp_path):
    default = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}}))
    assert default.settings.comparators == ["erm"]
    # a comparator that is not a method is refused by name; loss and EL2N fit the semi
    # setting (pseudo-labels where an image has no mask)
    with pytest.raises(ConfigError, match="comparators: expected a list of distinct htl.method"):
        load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                          {"name": "s", "comparators": ["erm", "jtt"]}))
    semi = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                             {"name": "s", "comparators": ["erm", "loss", "el2n"]},
                             overrides=["supervision.setting=semi",
                                        "supervision.label_fraction=0.25"]))
    assert semi.settings.comparators == ["erm", "loss", "el2n"]


def test_asha_grace_period_must_leave_a_last_epoch(tmp_path):
    with pytest.raises(ConfigError, match="sweep.grace_period: ASHA judges trials after this "
                                          "many epochs; expected 1 to train.epochs − 1 .5."):
        load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                          {"name": "s", "scheduler": "asha", "grace_period": 6},
                          overrides=["train.epochs=6"]))


@pytest.mark.parametrize("comparators, message", [
    ({"best": ["htl.method=erm"]}, "group name 'best'"),
    ({"Erm": ["htl.method=erm"]}, "group name 'Erm'"),
    ({"erm": "htl.method=erm"}, "comparators.erm: expected a list of key=value"),
    ({"other": ["htl.method=jtt"]}, "sweep.comparators: other does not fit the base config: "
                                    "htl.method: expected one of"),
    # erm and random are the verdict's baselines by name: the name must not lie
    ({"erm": ["htl.method=random"]}, "comparators.erm: a group named after a method runs "
                                     "that method, got htl.method=random"),
    ({"random-up": ["htl.method=erm"]}, "comparators.random-up: a group named after a method"),
])
def test_comparator_groups_are_named_and_checked_at_every_corner(tmp_path, comparators,
                                                                 message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                               {"name": "s", "comparators": comparators}))


def test_reuse_names_an_earlier_sweep_and_maps_groups_both_ways(tmp_path):
    earlier_dir = tmp_path / "one"
    earlier_dir.mkdir()
    write_sweep(earlier_dir, {"htl.lam": {"type": "float", "low": 0, "high": 1}},
                {"name": "one", "comparators": ["erm", "random"]})
    (tmp_path / "archive").mkdir()
    space = {"htl.lam": {"type": "float", "low": -0.9, "high": -0.1}}
    settings = {"name": "two", "comparators": {"erm": ["htl.method=erm"]}}

    def sweep_with(reuse):
        return load_sweep(write_sweep(tmp_path, space, settings, reuse=reuse))

    reuse = sweep_with({"sweep": "one/sweep.yaml", "archive": "archive",
                        "groups": {"erm": "erm", "best": "random"}}).reuse
    assert reuse.sweep_file == tmp_path / "one" / "sweep.yaml"
    assert reuse.archive == tmp_path / "archive" and reuse.groups == {"erm": "erm",
                                                                      "best": "random"}
    for bad, message in (
            ({"sweep": "nope.yaml", "groups": {"erm": "erm"}}, "reuse.sweep: sweep file not found"),
            ({"sweep": "one/sweep.yaml", "archive": "gone", "groups": {"erm": "erm"}},
             "reuse.archive: not a folder"),
            ({"sweep": "one/sweep.yaml", "groups": {"tta": "erm"}},
             "'tta' is not a confirmation group of this sweep (it has best, erm)"),
            ({"sweep": "one/sweep.yaml", "groups": {"erm": "loss"}},
             "reuse.groups.erm: 'loss' is not a confirmation group of"),
            ({"sweep": "one/sweep.yaml"}, "reuse: expected a mapping with sweep"),
            ({"sweep": "one/sweep.yaml", "groups": {"erm": "erm", "best": "erm"}},
             "reuse.groups: each of that sweep's groups counts as one of this sweep's at most")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            sweep_with(bad)


def test_a_setting_may_set_its_own_confirmation_seeds(tmp_path):
    space = {"htl.lam": {"type": "float", "low": 0, "high": 1}}
    assert load_sweep(write_sweep(tmp_path, space)).confirm_seeds(6) == 6
    assert load_sweep(write_sweep(tmp_path, space, {"name": "s", "seeds": 3})
                      ).confirm_seeds(6) == 3
    for bad in (0, "3", True):
        with pytest.raises(ConfigError, match=r"sweep.seeds: expected a positive integer"):
            load_sweep(write_sweep(tmp_path, space, {"name": "s", "seeds": bad}))


def test_reuse_in_a_circle_is_refused(tmp_path):
    space = {"htl.lam": {"type": "float", "low": 0, "high": 1}}
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / name).mkdir()
        write_sweep(tmp_path / name, space, {"name": name},
                    reuse={"sweep": f"../{other}/sweep.yaml", "groups": {"best": "best"}})
    with pytest.raises(ConfigError, match=r"reuse.sweep: .*reuses this sweep's runs in turn"):
        load_sweep(tmp_path / "a" / "sweep.yaml")


def test_a_space_that_pairs_down_weighting_with_soft_weights_is_refused(tmp_path):
    """The corner check pairs λ's low end with the first choice only: soft as the second
    choice beside λ < 0 would fail only when a trial sampled it."""
    space = {"htl.lam": {"type": "float", "low": -0.5, "high": 2.0},
             "htl.weighting": {"type": "categorical", "choices": ["hard", "soft"]}}
    with pytest.raises(ConfigError, match=r"htl.lam can be < 0 .* htl.weighting can be soft"):
        load_sweep(write_sweep(tmp_path, space))
    with pytest.raises(ConfigError, match=r"htl.lam can be < 0"):
        load_sweep(write_sweep(tmp_path, {"htl.lam": space["htl.lam"]},
                               overrides=["htl.weighting=soft"]))
    assert load_sweep(write_sweep(tmp_path, {"htl.lam": space["htl.lam"]})).space
