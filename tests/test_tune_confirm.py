"""The confirmation plan: the chosen configuration and its comparators, over seeds, in the
order the verdict reads them."""

from __future__ import annotations

from sweep_files import write_sweep

from htl_ray.tune.child_runs import PlannedRun
from htl_ray.tune.confirm import VERDICT_GROUPS, confirm_run_name, confirmation_plan
from htl_ray.tune.space import load_sweep


def test_confirmation_runs_give_every_comparator_the_attention_the_sweep_chose(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0.5, "high": 4},
                                         "htl.q": {"type": "float", "low": 0.05, "high": 0.4}},
                              {"name": "s", "comparators": ["erm", "random", "el2n"]},
                              overrides=["train.epochs=3", "htl.method=htl"]))
    plan = confirmation_plan(sweep, {"htl.lam": 2.5, "htl.q": 0.3}, seeds=2,
                             base_raw=sweep.base.to_dict())
    assert [(name, group, seed) for name, group, seed, _ in plan] == [
        # the verdict's groups first (best vs ERM and the placebo), seed-major; then the rest
        ("confirm-best-s0", "best", 0), ("confirm-erm-s0", "erm", 0),
        ("confirm-random-s0", "random", 0), ("confirm-best-s1", "best", 1),
        ("confirm-erm-s1", "erm", 1), ("confirm-random-s1", "random", 1),
        ("confirm-el2n-s0", "el2n", 0), ("confirm-el2n-s1", "el2n", 1)]
    assert set(VERDICT_GROUPS) == {g for _, g, _, _ in plan[:6]}
    for name, group, seed, cfg in plan:
        assert cfg.run.name == name and cfg.run.seed == seed and cfg.train.epochs == 3
        assert (cfg.htl.lam, cfg.htl.q) == (2.5, 0.3)               # the sweep's choice
        assert cfg.htl.method == ("htl" if group == "best" else group)
    assert all(isinstance(p, PlannedRun) for p in plan)
    assert plan[0].name == confirm_run_name("best", 0) and plan[0].config.run.seed == 0
    default = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 0, "high": 1}}))
    # an ERM sweep (the default method): its best config is the ERM group already
    assert default.base.htl.method == "erm"
    assert [g for _, g, _, _ in confirmation_plan(default, {"htl.lam": 0.5}, seeds=1,
                                                  base_raw=default.base.to_dict())] == ["best"]


def test_comparator_groups_with_their_own_overrides_keep_another_rounds_settings(tmp_path):
    """A round that searches down-weighting (λ < 0) while its comparators keep round one's λ:
    every comparator group gets its overrides on top of the chosen configuration; one that
    makes the chosen configuration again is not planned twice."""
    sweep = load_sweep(write_sweep(
        tmp_path, {"htl.lam": {"type": "float", "low": -0.9, "high": -0.2},
                   "htl.method": {"type": "categorical", "choices": ["htl", "tta"]}},
        {"name": "r2", "comparators": {"htl": ["htl.method=htl", "htl.lam=2.4"],
                                       "erm": ["htl.method=erm", "htl.lam=2.4"],
                                       "tta": ["htl.method=tta", "htl.lam=2.4"],
                                       "same": ["htl.method=tta"]}},
        overrides=["train.epochs=3", "htl.method=htl", "htl.q=0.3"]))
    assert set(sweep.comparator_groups) == {"htl", "erm", "tta", "same"}
    plan = confirmation_plan(sweep, {"htl.lam": -0.5, "htl.method": "tta"}, seeds=1,
                             base_raw=sweep.base.to_dict())
    got = {group: (cfg.htl.method, cfg.htl.lam, cfg.htl.q) for _, group, _, cfg in plan}
    assert got == {"best": ("tta", -0.5, 0.3), "htl": ("htl", 2.4, 0.3),
                   "erm": ("erm", 2.4, 0.3), "tta": ("tta", 2.4, 0.3)}     # no "same"
    assert [g for _, g, _, _ in plan] == ["best", "erm", "htl", "tta"]     # verdict's first
