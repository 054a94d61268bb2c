"""htl_ray.tune.roles: which child runs of a sweep count once scored, the metric each role
must hold, and the chosen configuration read back from a parent run's `best.*` params."""

from __future__ import annotations

from htl_ray.tracking.schema import ABLATION_ROLE, CONFIRM_ROLE, SWEEP_ROLE, TRIAL_ROLE
from htl_ray.tune.roles import BEST_PREFIX, RUN_KIND, SCORED_ROLES, best_params, scored_key


def test_confirmation_and_ablation_runs_are_the_scored_roles():
    assert RUN_KIND == {"confirm": "confirmation", "ablation": "ablation"}
    assert SCORED_ROLES == (CONFIRM_ROLE, ABLATION_ROLE)
    assert TRIAL_ROLE not in SCORED_ROLES and SWEEP_ROLE not in SCORED_ROLES


def test_confirmations_are_scored_on_test_and_ablations_on_val_only():
    assert scored_key(CONFIRM_ROLE) == "best/test/dice"
    assert scored_key(ABLATION_ROLE) == "best/val/dice"


def test_best_params_are_the_prefixed_params_without_their_prefix():
    params = {"sweep.name": "s", "space.htl.lam": "FloatDistribution(...)",
              f"{BEST_PREFIX}htl.lam": "0.25", f"{BEST_PREFIX}train.lr": "0.001",
              "htl.best.x": "1"}                            # 'best.' not at the start: not one
    assert best_params(params) == {"htl.lam": "0.25", "train.lr": "0.001"}


def test_an_unfinished_sweep_records_no_best_params():
    assert best_params({"sweep.name": "s", "sweep.metric": "val/dice"}) == {}
    assert best_params({}) == {}
