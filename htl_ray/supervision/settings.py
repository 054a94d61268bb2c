"""The three supervision settings as one registry: what the training set looks like, what the
loss is, which model is evaluated and which one the HTL scorer snapshots.

Driver side, `prepare_train` rewrites the training Ray Dataset once, before any worker starts,
so a label the setting hides never leaves the driver: semi-supervised runs blank the masks of
unlabeled images (and carry a `labeled` column), weakly-supervised runs replace every mask by
its (jittered) box, and a supervised run with f < 1 keeps only the labeled subset.
Worker side, an `Objective` turns a batch into a per-image loss so HTL weights apply alike.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, ClassVar

import numpy as np
import torch

from htl_ray.config import ExperimentConfig
from htl_ray.losses import make_loss
from htl_ray.supervision.box_loss import BoxLoss
from htl_ray.supervision.labels import (
    box_masks,
    choose_labeled,
    jitter_boxes,
    mask_boxes,
    size_strata,
)
from htl_ray.supervision.mean_teacher import (
    consistency_rampup,
    ema_update,
    make_teacher,
    semi_per_sample_loss,
)

logger = logging.getLogger(__name__)

LABELED = "labeled"


def label_seed(cfg: ExperimentConfig) -> int:
    s = cfg.supervision.label_seed
    return cfg.run.seed if s is None else s


def labeled_ids(cfg: ExperimentConfig, ids: np.ndarray, area_fraction: np.ndarray) -> set[str]:
    """The training ids that keep their mask (all of them when f = 1)."""
    f = cfg.supervision.label_fraction
    ids = np.asarray(ids).astype(str)
    if f >= 1.0:
        return set(ids.tolist())
    chosen = choose_labeled(ids, size_strata(area_fraction), f, label_seed(cfg))
    return set(ids[chosen].tolist())


def _train_ids_and_areas(cfg: ExperimentConfig, ds) -> tuple[np.ndarray, np.ndarray]:
    from htl_ray.data.schema import read_table

    ids = ds.select_columns(["id"]).to_pandas()["id"].astype(str).to_numpy()
    areas = read_table(cfg.data.path, columns=["id", "area_fraction"], split="train")
    area = areas.set_index(areas["id"].astype(str))["area_fraction"].reindex(ids).to_numpy()
    return ids, np.nan_to_num(area, nan=0.0)


def hide_masks(batch: dict[str, np.ndarray], keep: set[str]) -> dict[str, np.ndarray]:
    """Add the `labeled` column; unlabeled rows get an all-zero mask (the real one is gone)."""
    flags = np.array([str(i) in keep for i in batch["id"]], dtype=bool)
    masks = [m if f else bytes(len(m)) for m, f in zip(batch["mask"], flags, strict=True)]
    return {**batch, "mask": np.array(masks, dtype=object), LABELED: flags}


def repeat_labeled(batch: dict[str, np.ndarray], times: int) -> dict[str, np.ndarray]:
    """Each labeled row `times` times, each unlabeled row once."""
    counts = np.where(np.asarray(batch[LABELED], dtype=bool), times, 1)
    return {k: np.repeat(v, counts, axis=0) for k, v in batch.items()}


def repeats_for_share(n_labeled: int, n_unlabeled: int, share: float) -> int:
    """How many copies of each labeled row make them about `share` of an epoch (at least 1)."""
    if share <= 0 or n_labeled == 0:
        return 1
    return max(1, round(share * n_unlabeled / ((1.0 - share) * n_labeled)))


def boxes_for_masks(batch: dict[str, np.ndarray], sigma: float, seed: int
                    ) -> dict[str, np.ndarray]:
    """Replace each mask by its bounding box, jittered by σ·box size (seeded per image id)."""
    out = []
    for buf, h, w, sid in zip(batch["mask"], batch["height"], batch["width"], batch["id"],
                              strict=True):
        h, w = int(h), int(w)
        mask = np.frombuffer(buf, np.uint8).reshape(1, h, w)
        rng = np.random.default_rng([seed, zlib.crc32(str(sid).encode())])
        box = jitter_boxes(mask_boxes(mask), sigma, h, w, rng)
        out.append(box_masks(box, h, w)[0].tobytes())
    return {**batch, "mask": np.array(out, dtype=object)}


class Objective:
    """Per-image loss of one batch, plus the hooks the training loop calls around it."""

    name: ClassVar[str] = ""
    label_kind: ClassVar[str] = "mask"        # what the scorer's GT-aware term compares
    scores_with_labels: ClassVar[bool] = True
    # labels on some rows only (`labeled`): loss/EL2N use pseudo-labels elsewhere (scoring.py)
    scores_pseudo_labels: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.loss_fn = make_loss(cfg.train.loss, bce_weight=cfg.train.bce_weight,
                                 dice_weight=cfg.train.dice_weight,
                                 gamma=cfg.train.focal_gamma)

    # driver side ---------------------------------------------------------------
    @classmethod
    def describe(cls, cfg: ExperimentConfig) -> str:
        """One phrase for the run's start-up line."""
        s = cfg.supervision
        text = cls.title(cfg)
        if s.label_fraction < 1:
            text += f", label fraction f={s.label_fraction} (seed {label_seed(cfg)})"
        return text

    @classmethod
    def title(cls, cfg: ExperimentConfig) -> str:
        return cls.name

    @classmethod
    def prepare_train(cls, cfg: ExperimentConfig, ds):
        """Only the labeled subset (all of it when f = 1)."""
        if cfg.supervision.label_fraction >= 1.0:
            return ds
        from ray.data.expressions import col

        keep = labeled_ids(cfg, *_train_ids_and_areas(cfg, ds))
        return ds.filter(expr=col("id").is_in(sorted(keep))).materialize()

    @classmethod
    def epoch_rows(cls, cfg: ExperimentConfig, ds):
        """The rows one epoch iterates: `prepare_train`'s dataset (what HTL scores), or a
        rebalanced version of it. Ids may repeat here, never in what is scored."""
        return ds

    # worker side ---------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        """Called once with the (unwrapped) model, after any checkpoint was loaded."""

    def per_sample_loss(self, model: torch.nn.Module, images: torch.Tensor,
                        masks: torch.Tensor, batch: dict[str, np.ndarray], idx: np.ndarray,
                        epoch: int, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(model(images), masks)

    def after_step(self, model: torch.nn.Module) -> None:
        """Called after each optimizer step."""

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose predictions validation scores and checkpoints keep as `model`."""
        return model

    def snapshot_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the HTL scorer prunes and compares against its pruned copies."""
        return model

    def checkpoint_state(self, model: torch.nn.Module) -> dict[str, Any]:
        """Extra tensors a checkpoint needs beyond `model` (= eval_model) to resume."""
        return {}

    def restore(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        """Load a checkpoint written by this objective into the (unwrapped) model."""
        model.load_state_dict(state["model"])


class Supervised(Objective):
    name = "supervised"


class SemiSupervised(Objective):
    """Mean Teacher; HTL disagreement is measured on the teacher (no labels needed); the loss
    and EL2N comparators score it against the label where there is one, else against its own
    mask."""

    name = "semi"
    scores_with_labels = False
    scores_pseudo_labels = True

    @classmethod
    def title(cls, cfg: ExperimentConfig) -> str:
        return "semi-supervised (Mean Teacher)"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.teacher: torch.nn.Module | None = None
        self.step = 0
        self._pending_teacher: dict[str, Any] | None = None

    @classmethod
    def prepare_train(cls, cfg: ExperimentConfig, ds):
        keep = labeled_ids(cfg, *_train_ids_and_areas(cfg, ds))
        return ds.map_batches(hide_masks, fn_kwargs={"keep": keep},
                              batch_format="numpy").materialize()

    @classmethod
    def epoch_rows(cls, cfg: ExperimentConfig, ds):
        """Repeat labeled rows to about `labeled_share` of the epoch, shuffled once (seeded) so
        that every batch carries its share of masks: at the natural share f = 0.25 a batch of
        16 averages 4 masked images, and the supervised signal per step is noisy and thin."""
        from ray.data.expressions import col

        share = cfg.supervision.labeled_share
        n_lab = ds.filter(expr=col(LABELED)).count()
        n_all = ds.count()
        times = repeats_for_share(n_lab, n_all - n_lab, share)
        if times == 1:
            return ds
        rows = n_all - n_lab + n_lab * times
        logger.info(f"[htl-ray] semi: {n_lab} labeled rows repeated ×{times} → "
                    f"{n_lab * times / rows:.0%} of {rows} rows per epoch "
                    f"(supervision.labeled_share={share})")
        return (ds.map_batches(repeat_labeled, fn_kwargs={"times": times},
                               batch_format="numpy")
                .random_shuffle(seed=label_seed(cfg)).materialize())

    def attach(self, model: torch.nn.Module) -> None:
        self.teacher = make_teacher(model)
        if self._pending_teacher is not None:
            self.teacher.load_state_dict(self._pending_teacher)
        self.teacher.eval()

    def per_sample_loss(self, model, images, masks, batch, idx, epoch, generator):
        s = self.cfg.supervision
        labeled = torch.as_tensor(np.asarray(batch[LABELED], dtype=bool)[idx])
        weight = s.consistency_weight * consistency_rampup(epoch, s.consistency_rampup_epochs)
        return semi_per_sample_loss(model, self.teacher, images, masks, labeled, self.loss_fn,
                                    weight, s.noise_std, generator)

    def after_step(self, model: torch.nn.Module) -> None:
        ema_update(self.teacher, model, self.cfg.supervision.ema_decay, self.step)
        self.step += 1

    def eval_model(self, model):
        return self.teacher

    def snapshot_model(self, model):
        return self.teacher

    def checkpoint_state(self, model: torch.nn.Module) -> dict[str, Any]:
        # the checkpoint's `model` is the teacher (what validation scored); the student and
        # the EMA step count are what resuming needs on top
        return {"student": model.state_dict(), "teacher_step": self.step}

    def restore(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        model.load_state_dict(state.get("student", state["model"]))
        self._pending_teacher = state["model"]
        self.step = int(state.get("teacher_step", 0))


class WeaklySupervised(Objective):
    """Boxes only: projection + colour-affinity loss; GT-aware HTL compares boxes."""

    name = "weak"
    label_kind = "box"

    @classmethod
    def title(cls, cfg: ExperimentConfig) -> str:
        return f"weakly supervised (boxes, jitter σ={cfg.supervision.box_jitter})"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        s = cfg.supervision
        self.box_loss = BoxLoss(s.projection_weight, s.pairwise_weight, s.pairwise_threshold)

    @classmethod
    def prepare_train(cls, cfg: ExperimentConfig, ds):
        return ds.map_batches(boxes_for_masks, fn_kwargs={
            "sigma": cfg.supervision.box_jitter, "seed": label_seed(cfg)},
            batch_format="numpy").materialize()

    def per_sample_loss(self, model, images, masks, batch, idx, epoch, generator):
        warm = self.cfg.supervision.pairwise_warmup_epochs
        ramp = 1.0 if warm <= 0 else min(1.0, epoch / warm)
        return self.box_loss(model(images), masks, images, ramp)


SETTINGS: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Supervised, SemiSupervised, WeaklySupervised)}
