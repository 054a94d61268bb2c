"""A later round's sweep counts an earlier round's confirmation runs (`reuse:`): copied into
its own sweep, with every metric history, only where the configuration, seed and data are the
same; otherwise trained. A real MLflow SQLite store, no Ray."""

from __future__ import annotations

import logging

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from sweep_files import write_sweep

from htl_ray.tracking.schema import (
    CONFIRM_ROLE,
    DATASET_TAG,
    GROUP_TAG,
    PARENT_TAG,
    REUSED_SWEEP_TAG,
    REUSED_TAG,
    ROLE_TAG,
    SWEEP_TAG,
)
from htl_ray.tune.child_runs import PlannedRun, finished_elsewhere
from htl_ray.tune.confirm import confirmation_plan
from htl_ray.tune.reuse import reuse_run
from htl_ray.tune.space import load_sweep

EXPERIMENT = "rounds"


def _sweeps(tmp_path, uri, data):
    overrides = ["train.epochs=3", "htl.method=htl", "htl.lam=2.5", f"tracking.uri={uri}",
                 f"tracking.experiment={EXPERIMENT}", f"data.path={data}"]
    (tmp_path / "one").mkdir()
    write_sweep(tmp_path / "one", {"htl.q": {"type": "float", "low": 0.1, "high": 0.4}},
                {"name": "one", "comparators": ["erm"]}, overrides=overrides)
    two = load_sweep(write_sweep(
        tmp_path, {"htl.lam": {"type": "float", "low": -0.9, "high": -0.1}},
        {"name": "two", "comparators": {"erm": ["htl.method=erm", "htl.lam=2.5"],
                                        "tta": ["htl.method=tta", "htl.lam=2.5"]}},
        overrides=overrides + ["htl.q=0.3"],
        reuse={"sweep": "one/sweep.yaml", "groups": {"erm": "erm"}}))
    return load_sweep(tmp_path / "one" / "sweep.yaml"), two


def _earlier_run(client, exp_id, cfg, *, group, seed, dice, data="same"):
    """A finished, test-scored confirmation run of sweep `one`, as `htl-ray reproduce` leaves
    one: the config as params, two epochs of val Dice, the test score, the fingerprint of the
    data it trained on (`data`: "same" as cfg's, None for none, or another)."""
    from htl_ray.data.schema import read_manifest

    tags = {SWEEP_TAG: "one", ROLE_TAG: CONFIRM_ROLE, GROUP_TAG: group, PARENT_TAG: "p1"}
    if data is not None:
        tags[DATASET_TAG] = read_manifest(cfg.data.path)["fingerprint"] if data == "same" \
            else data
    run = client.create_run(exp_id, start_time=1_000, run_name=f"{group} s{seed}", tags=tags)
    rid = run.info.run_id
    params = {k: str(v) for k, v in cfg.flat().items()}
    items = sorted(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(rid, params=[Param(k, v) for k, v in items[i:i + 100]])
    client.log_batch(rid, metrics=[Metric("val/dice", 0.7, 1_100, 0),
                                   Metric("val/dice", 0.8, 1_200, 1),
                                   Metric("best/test/dice", dice, 1_300, 0)],
                     tags=[RunTag("htl.git_commit", "abc")])
    client.set_terminated(rid, status="FINISHED", end_time=1_400)
    return rid


def test_a_run_of_the_same_configuration_is_copied_once_and_another_is_trained(
        tmp_path, tracking_uri, synth_dataset, caplog):
    one, two = _sweeps(tmp_path, tracking_uri, synth_dataset)
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(EXPERIMENT)
    plan = {(p.group, p.seed): p for p in confirmation_plan(
        two, {"htl.lam": -0.5}, seeds=2, base_raw=two.base.to_dict())}
    earlier = confirmation_plan(one, {"htl.q": 0.3}, seeds=2, base_raw=one.base.to_dict())
    erm = {p.seed: p.config for p in earlier if p.group == "erm"}
    same = _earlier_run(client, exp_id, erm[0], group="erm", seed=0, dice=0.81)
    # seed 1 of round one trained another configuration (a different q)
    other = erm[1]
    other.htl.q = 0.2
    _earlier_run(client, exp_id, other, group="erm", seed=1, dice=0.79)

    copied = reuse_run(two, plan[("erm", 0)], parent_run_id="p2", trial_id="t2")
    assert copied and copied != same
    run, source = client.get_run(copied), client.get_run(same)
    assert run.info.status == "FINISHED"
    assert (run.info.start_time, run.info.end_time) == (1_000, 1_400)
    assert run.data.params == source.data.params
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(
        copied, "val/dice")] == [(0, 0.7, 1_100), (1, 0.8, 1_200)]
    assert run.data.metrics["best/test/dice"] == 0.81
    tags = run.data.tags
    assert (tags[SWEEP_TAG], tags[PARENT_TAG], tags[GROUP_TAG], tags[REUSED_TAG],
            tags[REUSED_SWEEP_TAG], tags["htl.git_commit"]) == ("two", "p2", "erm", same, "one",
                                                                "abc")
    # a later sitting finds the copy as this sweep's own finished run: no second copy
    assert finished_elsewhere(two, plan[("erm", 0)], parent_run_id="p2") == copied

    with caplog.at_level(logging.INFO, logger="htl_ray.tune.reuse"):
        assert reuse_run(two, plan[("erm", 1)], parent_run_id="p2", trial_id="t2") is None
    assert "confirm-erm-s1: not reused from one group 'erm' run 'erm s1': its configuration " \
           "differs (htl.q '0.2' → '0.3')" in caplog.text
    # a group the sweep does not reuse, and a seed round one never ran: trained
    assert reuse_run(two, plan[("tta", 0)], parent_run_id="p2", trial_id="t2") is None
    late = PlannedRun("confirm-erm-s5", "erm", 5, plan[("erm", 0)].config)
    with caplog.at_level(logging.INFO, logger="htl_ray.tune.reuse"):
        assert reuse_run(two, late, parent_run_id="p2", trial_id="t2") is None
    assert "one group 'erm' has no finished seed 5 in MLflow" in caplog.text
    assert len(client.search_runs([exp_id])) == 3             # the two earlier ones + 1 copy


def test_a_run_is_reused_only_on_data_shown_to_be_the_same(tmp_path, tracking_uri,
                                                           synth_dataset, caplog):
    """Same configuration and seed, but trained on other data, or with no fingerprint to
    compare: trained again. Of two candidates, the one that matches is taken."""
    one, two = _sweeps(tmp_path, tracking_uri, synth_dataset)
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(EXPERIMENT)
    plan = {(p.group, p.seed): p for p in confirmation_plan(
        two, {"htl.lam": -0.5}, seeds=3, base_raw=two.base.to_dict())}
    erm = {p.seed: p.config for p in confirmation_plan(one, {"htl.q": 0.3}, seeds=3,
                                                       base_raw=one.base.to_dict())
           if p.group == "erm"}
    _earlier_run(client, exp_id, erm[0], group="erm", seed=0, dice=0.8, data="f00dfeed")
    _earlier_run(client, exp_id, erm[1], group="erm", seed=1, dice=0.8, data=None)
    _earlier_run(client, exp_id, erm[2], group="erm", seed=2, dice=0.8, data="f00dfeed")
    good = _earlier_run(client, exp_id, erm[2], group="erm", seed=2, dice=0.8)
    with caplog.at_level(logging.INFO, logger="htl_ray.tune.reuse"):
        assert reuse_run(two, plan[("erm", 0)], parent_run_id="p2", trial_id="t") is None
        assert reuse_run(two, plan[("erm", 1)], parent_run_id="p2", trial_id="t") is None
        copied = reuse_run(two, plan[("erm", 2)], parent_run_id="p2", trial_id="t")
    assert "confirm-erm-s0: not reused from one group 'erm' run 'erm s0': its configuration " \
           "differs (the dataset (htl.dataset_fingerprint))" in caplog.text
    assert "confirm-erm-s1: not reused from one group 'erm' run 'erm s1': a dataset " \
           "fingerprint is missing" in caplog.text
    assert client.get_run(copied).data.tags[REUSED_TAG] == good
