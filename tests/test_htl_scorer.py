"""The actor-pool scorer computes exactly what a plain in-process loop computes."""

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import pids_titled

from htl_ray.config import ModelConfig
from htl_ray.data.loading import split_dataset
from htl_ray.data.schema import read_table
from htl_ray.htl.scorer import ScorerUnschedulable, ScoringSpec, score_dataset, score_in_process
from htl_ray.models import create_model

MODEL = {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "in_channels": 3,
         "decoder_channels": [32, 16, 8, 8, 4]}


def test_actor_pool_scores_equal_in_process_scores_even_when_an_actor_is_killed(
        ray_cluster, synth_dataset):
    torch.manual_seed(1)
    model = create_model(ModelConfig(**MODEL))
    # logits near the decision boundary, so the pruned copies disagree with the dense model
    model.segmentation_head[0].bias.data.fill_(0.0)
    state = model.state_dict()
    spec = ScoringSpec(model=MODEL, sparsities=(0.3, 0.5, 0.7), batch_size=8, pool_size=2)
    ds = split_dataset(synth_dataset, "train")
    # a refresh whose scorer actor process is SIGKILLed while it works: Ray Data restarts the
    # actor and retries its batch; the table must still hold every id exactly once
    result: dict = {}
    # scorer actors of an earlier test may still be exiting: never theirs
    earlier = set(pids_titled("ScorerActor"))
    worker = threading.Thread(target=lambda: result.update(t=score_dataset(ds, state, spec)))
    worker.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and worker.is_alive() and time.time() < deadline:
        pids = sorted(set(pids_titled("ScorerActor")) - earlier)
        if pids:
            time.sleep(0.5)                       # let it take its first batch
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:            # it ended meanwhile: take the next one
                earlier.add(pids[0])
        time.sleep(0.1)
    worker.join(timeout=300)
    assert killed is not None, "no scorer actor was seen while the refresh ran"
    pooled = result["t"]
    rows = read_table(synth_dataset, columns=["id", "image", "mask", "height", "width"],
                      split="train")
    plain = score_in_process({c: rows[c].to_numpy() for c in rows.columns}, state, spec)
    assert pooled.id.tolist() == plain.id.tolist() and pooled.id.is_unique
    measured = pooled.attrs["measured_sparsity"]                       # reported per sparsity
    assert set(measured) == {0.3, 0.5, 0.7}
    assert all(abs(measured[s] - s) <= 0.005 for s in measured)
    assert len(pooled) == len(rows) == 140
    cols = ["d_0.30", "d_0.50", "d_0.70", "h", "gt_gap", "h_gt", "loss", "el2n"]
    assert set(cols) <= set(pooled.columns)
    for c in cols:
        np.testing.assert_allclose(pooled[c].to_numpy(), plain[c].to_numpy(), atol=1e-6, rtol=0)
    assert pooled.h.between(0, 1).all() and pooled.h.max() > 0
    np.testing.assert_allclose(pooled.h, pooled[["d_0.30", "d_0.50", "d_0.70"]].mean(1),
                               atol=1e-12)
    # more pruning, more disagreement (on average)
    assert pooled["d_0.70"].mean() >= pooled["d_0.30"].mean()


def test_unlabeled_scoring_returns_only_label_free_columns(synth_dataset):
    """Without labels only the disagreement columns exist (the semi setting's unlabeled
    images); the actor pool runs this path in the semi-supervised training test."""
    model = create_model(ModelConfig(**MODEL))
    spec = ScoringSpec(model=MODEL, sparsities=(0.5,), with_labels=False, batch_size=64)
    rows = read_table(synth_dataset, columns=["id", "image", "mask", "height", "width"],
                      split="val")
    table = score_in_process({c: rows[c].to_numpy() for c in rows.columns},
                             model.state_dict(), spec)
    assert set(table.columns) == {"id", "d_0.50", "h"} and len(table) == len(rows)


def test_scorer_threads_default_to_its_cpus_and_follow_htl_scorer_threads(ray_cluster):
    from htl_ray.config import load_config
    from htl_ray.htl.coordinator import spec_from_config
    from htl_ray.htl.scorer import ScorerActor

    ref = ray_cluster.put(create_model(ModelConfig(**MODEL)).state_dict())
    before = torch.get_num_threads()
    try:
        ScorerActor(ScoringSpec(model=MODEL, sparsities=(0.5,), cpus_per_actor=1.0), [ref])
        assert torch.get_num_threads() == 1
        # synchronous refresh: the trainers wait, so the scorer may use their cores as well
        spec = spec_from_config(load_config(None, ["htl.scorer_threads=2"]))
        assert (spec.threads, spec.cpus_per_actor) == (2, 1.0)
        ScorerActor(ScoringSpec(model=MODEL, sparsities=(0.5,), threads=spec.threads), [ref])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_scorer_in_bf16_channels_last_agrees_with_fp32(ray_cluster, synth_dataset):
    """The GPU defaults (bf16 autocast, channels-last), asked for on CPU: same columns, scores
    within bf16's precision of the fp32 scorer's, measured sparsity unchanged."""
    from htl_ray.htl.scorer import ScorerActor

    torch.manual_seed(2)
    state = create_model(ModelConfig(**MODEL)).state_dict()
    rows = read_table(synth_dataset, columns=["id", "image", "mask", "height", "width"],
                      split="val")
    batch = {c: rows[c].to_numpy() for c in rows.columns}
    ref = ray_cluster.put(state)
    fp32 = ScorerActor(ScoringSpec(model=MODEL, sparsities=(0.5,), precision="fp32"), [ref])
    bf16 = ScorerActor(ScoringSpec(model=MODEL, sparsities=(0.5,), precision="bf16",
                                   memory_format="channels_last"), [ref])
    assert bf16.place.describe() == "cpu bfloat16 autocast, channels-last"
    a, b = fp32(batch), bf16(batch)
    assert set(a) == set(b) and a["id"].tolist() == b["id"].tolist()
    assert bf16.sparsity == fp32.sparsity
    for col in ("h", "loss", "el2n", "dense_iou"):
        np.testing.assert_allclose(b[col], a[col], atol=0.08, err_msg=col)


def test_a_refresh_whose_actors_cannot_start_fails_clearly_instead_of_stalling(ray_cluster,
                                                                              synth_dataset):
    """Every CPU held elsewhere (as by a trial whose placement group was never released): the
    refresh fails after htl.scorer_start_timeout_s, saying what it asked and what is free,
    instead of waiting 30 minutes for Ray Data's no-progress timeout."""

    @ray_cluster.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    # split_dataset materialises, as for the trainer: a read inside the scoring pipeline would
    # wait for the same CPUs
    val = split_dataset(synth_dataset, "val")
    hog = Hog.remote()
    ray_cluster.get(hog.ready.remote(), timeout=120)     # the CPUs an earlier test held: back
    spec = ScoringSpec(model=MODEL, sparsities=(0.5,), batch_size=8, start_timeout_s=3)
    state = create_model(ModelConfig(**MODEL)).state_dict()
    started = time.time()
    try:
        with pytest.raises(ScorerUnschedulable, match=r"1 scorer actor\(s\) of 1 CPU each could "
                                                      r"not start within 3 s .*0 of 2 CPUs free"):
            score_dataset(val, state, spec)
    finally:
        ray_cluster.kill(hog)
    assert time.time() - started < 120
    # the failed attempt leaves no pending actor behind to take the CPUs once they are free
    deadline = time.time() + 60
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) == 2
    # with the CPUs back, the same refresh runs
    table = score_dataset(val, state, dataclasses.replace(spec, start_timeout_s=60))
    assert len(table) == len(read_table(synth_dataset, columns=["id"], split="val"))


def test_semi_scoring_reads_the_labeled_column_in_the_actor_and_in_process(ray_cluster,
                                                                           synth_dataset):
    """The semi-supervised training set carries `labeled` and zeroed masks on the other rows:
    the actor scores loss/EL2N against the label or, without one, the model's own mask, like
    the in-process reference; a set without the column is refused by name."""
    from htl_ray.htl.scorer import ScorerActor
    from htl_ray.supervision.settings import LABELED, hide_masks

    torch.manual_seed(2)
    model = create_model(ModelConfig(**MODEL))
    rows = read_table(synth_dataset, columns=["id", "image", "mask", "height", "width"],
                      split="val")
    batch = {c: rows[c].to_numpy() for c in rows.columns}
    keep = set(batch["id"][::4].astype(str))                # a quarter keep their masks
    semi = hide_masks(batch, keep)
    spec = ScoringSpec(model=MODEL, sparsities=(0.5,), with_labels=False, pseudo_labels=True,
                       batch_size=64)
    reference = score_in_process(semi, model.state_dict(), spec)
    assert {"id", "d_0.50", "h", "loss", "el2n", "labeled"} == set(reference.columns)
    assert reference["labeled"].sum() == len(keep)
    actor = ScorerActor(spec, [ray_cluster.put(model.state_dict())])
    out = actor(semi)
    scored = pd.DataFrame({k: v for k, v in out.items() if not k.startswith("measured_")})
    scored = scored.sort_values("id").reset_index(drop=True)
    np.testing.assert_allclose(scored["loss"], reference["loss"], rtol=1e-5)
    np.testing.assert_allclose(scored["el2n"], reference["el2n"], rtol=1e-5)
    # the hidden masks were not used as labels: unlabeled rows score differently against them
    as_labels = score_in_process(semi, model.state_dict(), dataclasses.replace(
        spec, with_labels=True, pseudo_labels=False))
    unlabeled = ~reference["id"].astype(str).isin(keep).to_numpy()
    assert (np.abs(as_labels["el2n"] - reference["el2n"]).to_numpy()[unlabeled] > 1e-4).all()
    with pytest.raises(KeyError, match=LABELED):
        score_in_process(batch, model.state_dict(), spec)


def test_tta_and_entropy_methods_are_scored_beside_h_in_the_actor_and_in_process(
        ray_cluster, synth_dataset):
    """htl.method=tta / entropy: the scorer computes that signal of the dense model from the
    same snapshot (and forward pass) as h, equal to htl_ray.quality's own, and no other
    quality signal. One actor-pool run scores both, to keep the suite short."""
    from htl_ray.config import load_config
    from htl_ray.data.loading import decode_batch
    from htl_ray.htl.coordinator import spec_from_config
    from htl_ray.quality import quality_signals

    torch.manual_seed(2)
    model = create_model(ModelConfig(**MODEL))
    model.segmentation_head[0].bias.data.fill_(0.0)
    state = model.state_dict()
    for method in ("tta", "entropy"):
        cfg = load_config(None, [f"htl.method={method}", "htl.sparsities=[0.5]"])
        assert spec_from_config(cfg).signals == (method,)
    rows = read_table(synth_dataset, columns=["id", "image", "mask", "height", "width"],
                      split="val")
    batch = {c: rows[c].to_numpy() for c in rows.columns}
    base = ScoringSpec(model=MODEL, sparsities=(0.5,), batch_size=16)
    only_entropy = score_in_process(batch, state, dataclasses.replace(base,
                                                                      signals=("entropy",)))
    assert "entropy" in only_entropy and not {"tta", "uncertain"} & set(only_entropy.columns)
    spec = dataclasses.replace(base, signals=("tta", "entropy"))
    plain = score_in_process(batch, state, spec)
    pooled = score_dataset(split_dataset(synth_dataset, "val"), state, spec)
    assert "uncertain" not in plain and "uncertain" not in pooled
    images, _ = decode_batch(batch)
    model.eval()
    direct = quality_signals(model, images)
    order = np.argsort(rows["id"].to_numpy())
    for method in ("tta", "entropy"):
        np.testing.assert_allclose(pooled[method].to_numpy(), plain[method].to_numpy(),
                                   atol=1e-6)
        np.testing.assert_allclose(plain[method].to_numpy(), direct[method][order], atol=1e-6)
        assert plain[method].between(0, 1).all() and plain[method].std() > 0
    np.testing.assert_allclose(only_entropy["entropy"], plain["entropy"], atol=1e-12)
