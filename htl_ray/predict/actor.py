"""The predictor actor: the scorer's pattern (htl_ray.htl.scorer) applied to new images.

Each actor of a Ray Data `ActorPoolStrategy` builds the model once (and, when the risk needs
h, its pruned copies), then per batch decodes the images, segments them at the training size,
computes the quality-control signals, and writes each mask at the image's original size. Only
per-image scalars travel back, so the driver's memory does not grow with the images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from htl_ray.config import DEFAULT_SPARSITIES
from htl_ray.data.images import RecordDefect
from htl_ray.device import best_device, placement
from htl_ray.inference import (
    MASK_SUFFIX,
    PROBABILITY_SUFFIX,
    ModelBundle,
    load_rgb,
    probability_at,
    to_input_size,
    to_tensor,
)
from htl_ray.quality import RISKS, quality_signals, review_flags


@dataclass
class PredictSpec:
    """How to predict: outputs, risk, and the actor pool's resources."""

    out_dir: str
    risk: str
    review_threshold: float
    probabilities: bool = False
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    pruning: str = "l1_unstructured"
    batch_size: int = 8
    pool_size: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads: int = 0
    precision: str = "auto"
    memory_format: str = "auto"
    start_timeout_s: float = 120.0


def write_png(array: np.ndarray, path: Path) -> None:
    """Write atomically: a mask on disk is always whole, so a re-run may trust it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


class PredictorActor:
    """Callable class for `map_batches` over rows with `id` and either `path` (an image file)
    or `image`/`height`/`width`/`orig_height`/`orig_width` (an ingested dataset)."""

    def __init__(self, spec: PredictSpec, bundle_ref):
        import ray

        torch.set_num_threads(spec.threads or max(1, int(spec.cpus_per_actor)))
        self.spec = spec
        self.risk = RISKS[spec.risk]
        bundle: ModelBundle = ray.get(bundle_ref)
        self.size = tuple(bundle.input_size)
        self.place = placement(best_device(spec.gpus_per_actor), spec.precision,
                               spec.memory_format)
        dense = bundle.build()
        self.pruned = {}
        if self.risk.needs_pruning:
            from htl_ray.pruning import pruned_copies

            self.pruned = {s: self.place.prepare(m) for s, m in
                           pruned_copies(dense, spec.sparsities, spec.pruning).items()}
        self.model = self.place.prepare(dense)
        self.out = Path(spec.out_dir)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.place.autocast():
            return self.model(x).float()

    def _images(self, batch: dict[str, np.ndarray]) -> tuple[list, list, list]:
        """(resized images, original (h, w), error or None) per row."""
        resized, sizes, errors = [], [], []
        blank = np.zeros((*self.size, 3), dtype=np.uint8)
        for i in range(len(batch["id"])):
            try:
                if "path" in batch:
                    rgb = load_rgb(batch["path"][i])
                    sizes.append(rgb.shape[:2])
                    resized.append(to_input_size(rgb, self.size))
                else:
                    h, w = int(batch["height"][i]), int(batch["width"][i])
                    rgb = np.frombuffer(batch["image"][i], np.uint8).reshape(h, w, 3)
                    sizes.append((int(batch["orig_height"][i]), int(batch["orig_width"][i])))
                    resized.append(to_input_size(rgb, self.size))
                errors.append(None)
            except RecordDefect as defect:
                sizes.append((0, 0))
                resized.append(blank)
                errors.append(defect.detail)
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop the others
                sizes.append((0, 0))
                resized.append(blank)
                errors.append(f"{batch['path'][i] if 'path' in batch else batch['id'][i]}: "
                              f"{type(exc).__name__}: {exc}")
        return resized, sizes, errors

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resized, sizes, errors = self._images(batch)
        x = self.place.inputs(to_tensor(np.stack(resized)))
        logits = self._forward(x)
        signals = quality_signals(self._forward, x, logits, tta=self.risk.needs_tta)
        if self.pruned:
            from htl_ray.htl.scoring import score_population_batch

            with self.place.autocast():
                signals["h"] = np.asarray(score_population_batch(
                    [(self.model, self.pruned)], x)["h"], dtype=np.float64)
        risk = self.risk.of(signals)
        probs = torch.sigmoid(logits)[:, 0].cpu().numpy()
        area = np.zeros(len(probs))
        for i, rid in enumerate(batch["id"]):
            if errors[i] is not None:
                continue
            prob = probability_at(probs[i], *sizes[i])
            mask = prob > 0.5
            area[i] = float(mask.mean())
            write_png(mask.astype(np.uint8) * 255, self.out / f"{rid}{MASK_SUFFIX}")
            if self.spec.probabilities:
                write_png(np.round(prob * 255).astype(np.uint8),
                          self.out / f"{rid}{PROBABILITY_SUFFIX}")
        ok = np.array([e is None for e in errors])
        review, reason = review_flags(risk, area, self.spec.review_threshold)
        return {
            "id": np.asarray(batch["id"]),
            "source": np.asarray(batch["path"] if "path" in batch else batch["id"]),
            "height": np.array([s[0] for s in sizes]), "width": np.array([s[1] for s in sizes]),
            "area_fraction": area,
            "risk": np.where(ok, risk, np.nan),
            "review": ok & review,
            "review_reason": np.where(ok, reason, "").astype(object),
            **{k: np.where(ok, v, np.nan) for k, v in signals.items()},
            "error": np.array(["" if e is None else e for e in errors], dtype=object),
        }
