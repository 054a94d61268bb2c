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


def test_scored_runs_are_the_finished_scored_runs_of_one_sweep_group_and_seed(tracking_uri):
    """Only a FINISHED run of the sweep, role, group and seed asked for, holding its role's
    scored metric (and under the parent run, when one is given), counts; an experiment not in
    the store is None, not an empty list (an archive not imported)."""
    from mlflow import MlflowClient

    from htl_ray.tracking.schema import GROUP_TAG, PARENT_TAG, ROLE_TAG, SWEEP_TAG
    from htl_ray.tune.roles import scored_runs

    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("sweeps")

    def run(name, *, sweep="s", role=CONFIRM_ROLE, group="erm", seed=0, parent="p1",
            status="FINISHED", metric="best/test/dice"):
        r = client.create_run(exp, run_name=name, tags={
            SWEEP_TAG: sweep, ROLE_TAG: role, GROUP_TAG: group, PARENT_TAG: parent})
        client.log_param(r.info.run_id, "run.seed", str(seed))
        if metric:
            client.log_metric(r.info.run_id, metric, 0.8)
        client.set_terminated(r.info.run_id, status)
        return name

    counted = run("counted")
    run("other seed", seed=1), run("other group", group="htl"), run("other sweep", sweep="t")
    run("failed", status="FAILED"), run("unscored", metric=None)
    run("val only", metric="best/val/dice")
    elsewhere = run("other parent", parent="p2")
    run("ablation", role=ABLATION_ROLE, metric="best/val/dice")

    def names(**kw):
        found = scored_runs(tracking_uri, "sweeps", sweep="s", group="erm", seed=0, **kw)
        return sorted(r.info.run_name for r in found)

    assert names(role=CONFIRM_ROLE) == sorted([counted, elsewhere])
    assert names(role=CONFIRM_ROLE, parent_run_id="p1") == [counted]
    assert names(role=ABLATION_ROLE) == ["ablation"]        # scored on val only
    assert scored_runs(tracking_uri, "sweeps", sweep="s", role=CONFIRM_ROLE, group="erm",
                       seed=7) == []
    assert scored_runs(tracking_uri, "no such experiment", sweep="s", role=CONFIRM_ROLE,
                       group="erm", seed=0) is None
