"""Actor-pool scorer: HTL scores of a whole Ray Dataset for one snapshot.

`map_batches` with an `ActorPoolStrategy`: each actor builds the model once, fetches the
snapshot's state dict from the object store, makes one pruned copy per sparsity, and then, per
batch, runs the dense model once and each pruned copy once, returning per-sample scalars only
(id, d_s for every s, h, and the GT-aware / loss / EL2N terms where labels exist; in the
semi-supervised setting loss and EL2N against pseudo-labels where they do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from htl_ray.config import DEFAULT_SPARSITIES, ModelConfig
from htl_ray.data.loading import decode_batch
from htl_ray.device import best_device, placement
from htl_ray.htl.scoring import score_population_batch
from htl_ray.models import create_model
from htl_ray.pruning import measured_sparsity, pruned_copies
from htl_ray.quality import quality_signals
from htl_ray.supervision.settings import LABELED


@dataclass
class ScoringSpec:
    """What to score with: model architecture, sparsities and pruning method."""

    model: dict[str, Any]
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    method: str = "l1_unstructured"
    with_labels: bool = True
    label_kind: str = "mask"          # "box" in the weak setting: GT-aware term uses box IoU
    # semi: masks only on rows flagged `labeled`; loss/EL2N score the rest against the model's
    # own mask (htl_ray.htl.scoring)
    pseudo_labels: bool = False
    batch_size: int = 32
    pool_size: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads: int = 0                  # torch threads per actor; 0: one per reserved CPU
    precision: str = "auto"           # train.precision / train.memory_format (htl_ray.device)
    memory_format: str = "auto"
    start_timeout_s: float = 600.0    # the actors must start within this; 0: Ray Data's wait
    # `htl-ray score`: also the quality-control signals of the newest dense model (tta, entropy,
    # uncertain; htl_ray.quality) — four more forward passes, so not during training refreshes
    quality: bool = False
    # during training, only the signals the method ranks by (htl.method=tta or entropy)
    signals: tuple[str, ...] = ()


class ScorerUnschedulable(RuntimeError):
    """The scorer actors could not start: the cluster's free resources do not hold them."""


def build_scoring_models(spec: ScoringSpec, state: dict[str, torch.Tensor]):
    """Dense model loaded with `state` and its pruned copies (shared by actors and tests)."""
    dense = create_model(ModelConfig(**spec.model))
    dense.load_state_dict(state)
    dense.eval()
    return dense, pruned_copies(dense, spec.sparsities, spec.method)


class ScorerActor:
    """Callable class for `map_batches`: models are built and pruned once per actor."""

    def __init__(self, spec: ScoringSpec, snapshots: list):
        import ray

        torch.set_num_threads(spec.threads or max(1, int(spec.cpus_per_actor)))
        self.spec = spec
        # a GPU share (htl.scorer_gpus, e.g. 0.25 beside the trainers) puts the models on it
        self.place = placement(best_device(spec.gpus_per_actor), spec.precision,
                               spec.memory_format)
        # snapshots live in the object store; one (dense, pruned copies) pair per snapshot,
        # pruned on the CPU (sparsity measured there), then moved
        population = [build_scoring_models(spec, ray.get(ref)) for ref in snapshots]
        self.sparsity = {s: measured_sparsity(m) for s, m in population[-1][1].items()}
        self.population = [(self.place.prepare(dense),
                            {s: self.place.prepare(m) for s, m in pruned.items()})
                           for dense, pruned in population]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # decoded on the scoring device: on a GPU the host's float conversion and transfer
        # bound the scorer (bench/gpu_throughput.py)
        images, masks = decode_batch(batch, self.place.device)
        inputs = self.place.inputs(images)
        with self.place.autocast():
            scores = score_population_batch(
                self.population, inputs, *_labels(self.spec, batch, masks),
                extra=_signals_extra(self.spec, inputs))
        n = len(batch["id"])
        # measured once per actor; carried as columns so the caller can report it
        sparsity = {f"{SPARSITY_PREFIX}{s:.2f}": np.full(n, v) for s, v in self.sparsity.items()}
        return {"id": np.asarray(batch["id"]), **scores, **sparsity}


SPARSITY_PREFIX = "measured_sparsity_"


def signals_of(spec: ScoringSpec, model, images: torch.Tensor,
               logits: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The quality-control signals `spec` asks for, of the newest dense model (`logits`: its
    output on `images`, when already computed): all of them for `htl-ray score`, else only
    those the method ranks by (TTA's three extra forward passes only when it is asked for)."""
    if spec.quality:
        return quality_signals(model, images, logits)
    out = quality_signals(model, images, logits, tta="tta" in spec.signals)
    return {k: v for k, v in out.items() if k in spec.signals}


def _signals_extra(spec: ScoringSpec, images: torch.Tensor):
    """`score_population_batch`'s `extra`: the signals from the dense pass it made already."""
    if not (spec.quality or spec.signals):
        return None
    return lambda model, logits: signals_of(spec, lambda x: model(x).float(), images, logits)


def _labels(spec: ScoringSpec, batch: dict[str, np.ndarray], masks: torch.Tensor
            ) -> tuple[torch.Tensor | None, str, torch.Tensor | None]:
    """`score_population_batch`'s masks, label kind and labeled-row flags for this spec."""
    if spec.pseudo_labels:
        if LABELED not in batch:
            raise KeyError(f"scoring with pseudo-labels needs the {LABELED!r} column (the "
                           f"semi-supervised training set), got columns {sorted(batch)}")
        return masks, spec.label_kind, torch.as_tensor(np.asarray(batch[LABELED], dtype=bool))
    return (masks if spec.with_labels else None), spec.label_kind, None


def pop_measured_sparsity(table: pd.DataFrame) -> dict[float, float]:
    """Remove the measured-sparsity columns from a score table; return {target: measured}."""
    cols = [c for c in table.columns if c.startswith(SPARSITY_PREFIX)]
    out = {float(c[len(SPARSITY_PREFIX):]): float(table[c].iloc[0]) for c in cols if len(table)}
    table.drop(columns=cols, inplace=True)
    return out


def score_dataset(dataset, snapshot, spec: ScoringSpec) -> pd.DataFrame:
    """Score every row of `dataset` (a Ray Dataset with id/image/mask/height/width columns).

    `snapshot` is a state dict, or a list of ObjectRefs to state dicts (a PIE population,
    oldest first)."""
    import ray
    from ray.data import ActorPoolStrategy

    if isinstance(snapshot, dict):
        refs = [ray.put({k: v.detach().cpu() for k, v in snapshot.items()})]
    else:
        refs = list(snapshot)
    if spec.pool_size > 1 and dataset.num_blocks() < 2 * spec.pool_size:
        # Give every actor work. Materialised first: once the actors hold the CPUs, a
        # repartition task inside the same pipeline could never be scheduled.
        dataset = dataset.repartition(2 * spec.pool_size).materialize()
    scored = dataset.map_batches(
        ScorerActor,
        fn_constructor_kwargs={"spec": spec, "snapshots": refs},
        compute=ActorPoolStrategy(size=spec.pool_size),
        batch_size=spec.batch_size,
        batch_format="numpy",
        zero_copy_batch=True,           # the actor only reads its batch (ray#44905: copies cost)
        num_cpus=spec.cpus_per_actor,
        num_gpus=spec.gpus_per_actor or None,
    )
    wait_for_room(spec)
    table = scored.to_pandas().sort_values("id").reset_index(drop=True)
    table.attrs["measured_sparsity"] = pop_measured_sparsity(table)
    return table


def wait_for_room(spec: ScoringSpec) -> None:
    """Raise ScorerUnschedulable unless the pool's actors can start within spec.start_timeout_s.

    Without it, actors that never get their CPUs (held by a trial whose placement group was
    never released, say) stall the refresh until Ray Data's 30-minute no-progress timeout, with
    a message about slow UDFs. A placement group of the pool's bundles is the probe: unlike
    Ray Data's own start-up wait, it is removed whether or not it was placed, so a failed
    refresh leaves no pending actor behind to take the CPUs once they are freed."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {k: v for k, v in (("CPU", spec.cpus_per_actor), ("GPU", spec.gpus_per_actor)) if v}
    if spec.start_timeout_s <= 0 or not bundle:
        return
    probe = placement_group([bundle] * spec.pool_size)
    try:
        placed = probe.wait(timeout_seconds=spec.start_timeout_s)
    finally:
        remove_placement_group(probe)
    if not placed:
        raise ScorerUnschedulable(_unschedulable(spec))


def _unschedulable(spec: ScoringSpec) -> str:
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    ask = f"{spec.cpus_per_actor:g} CPU" + (f" + {spec.gpus_per_actor:g} GPU"
                                            if spec.gpus_per_actor else "")
    have = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free" + (
        f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs" if spec.gpus_per_actor
        else "")
    return (f"HTL refresh: {spec.pool_size} scorer actor(s) of {ask} each could not start "
            f"within {spec.start_timeout_s:g} s (htl.scorer_start_timeout_s); the cluster has "
            f"{have}. Either htl.scorer_actors × htl.scorer_cpus asks for more than the trainers "
            "leave free (scaling.num_workers × resources_per_worker), or CPUs are held "
            "elsewhere: another Ray instance on this machine (a test suite, another job) can "
            "keep a stopped trial's CPUs from being released. Stop and run the same command "
            "again (a fresh cluster; runs resume from their checkpoints); on an autoscaling "
            "cluster that adds nodes slowly, raise htl.scorer_start_timeout_s")


def score_in_process(rows: Sequence[dict[str, Any]] | dict[str, np.ndarray],
                     state: dict[str, torch.Tensor], spec: ScoringSpec) -> pd.DataFrame:
    """The same computation without Ray (reference for tests and benchmarks)."""
    population = [build_scoring_models(spec, state)]
    batch = rows if isinstance(rows, dict) else {k: np.asarray([r[k] for r in rows], dtype=object)
                                                 for k in rows[0]}
    n = len(batch["id"])
    parts = []
    for start in range(0, n, spec.batch_size):
        sub = {k: v[start:start + spec.batch_size] for k, v in batch.items()}
        images, masks = decode_batch(sub)
        scores = score_population_batch(population, images, *_labels(spec, sub, masks),
                                        extra=_signals_extra(spec, images))
        parts.append(pd.DataFrame({"id": sub["id"], **scores}))
    return pd.concat(parts, ignore_index=True).sort_values("id").reset_index(drop=True)
