"""Apply a trained model to images of any size: the one pre- and post-processing path.

An image is decoded and made RGB as ingestion does (htl_ray.data.images), resized to the
model's training size with the same bilinear resize, scaled to [0, 1], segmented, and the
probability map is resized back to the image's own width and height (bilinear) before it is
thresholded at 0.5. `htl-ray predict`, the MLflow Model and `evaluate` at original resolution
all go through these functions, so on the CPU their masks agree pixel for pixel (on a GPU,
`predict` runs in bf16 autocast by default, so a probability near 0.5 may round the other way).

A `ModelBundle` is what a trained model is, wherever it is stored (a run directory, a
checkpoint directory, an MLflow Model): weights, architecture, training size, identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from htl_ray.data.images import image_to_rgb, open_image
from htl_ray.errors import UserError

MASK_SUFFIX = "_segmentation.png"          # ISIC submissions: <id>_segmentation.png
PROBABILITY_SUFFIX = "_probability.png"
BUNDLE_FILE = "model.json"
BUNDLE_ARTIFACT = "bundle"           # the ModelBundle inside an MLflow Model's artifacts
WEIGHTS_FILE = "weights.pt"


@dataclass
class ModelBundle:
    """A trained model and what is needed to apply it."""

    state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    input_size: tuple[int, int]                      # (height, width) the model was trained at
    identity: dict[str, Any] = field(default_factory=dict)  # run id, epoch, data fingerprint

    def build(self) -> torch.nn.Module:
        from htl_ray.config import ModelConfig
        from htl_ray.models import create_model

        model = create_model(ModelConfig(**self.model_config))
        model.load_state_dict(self.state)
        return model.eval()

    def save(self, directory: str | Path) -> Path:
        """Weights (tensors only) and a JSON description; `load` reads them back."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.state, d / WEIGHTS_FILE)
        (d / BUNDLE_FILE).write_text(json.dumps(
            {"model_config": self.model_config, "input_size": list(self.input_size),
             "identity": self.identity}, indent=2, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        d = Path(directory)
        try:
            desc = json.loads((d / BUNDLE_FILE).read_text())
            state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable part: not a model bundle
            raise UserError(f"{d}: not an htl-ray model ({BUNDLE_FILE} + {WEIGHTS_FILE}): "
                             f"{type(exc).__name__}: {exc}") from None
        return cls(state=state, model_config=desc["model_config"],
                   input_size=tuple(desc["input_size"]), identity=desc.get("identity", {}))


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, decoded as ingestion decodes it (RecordDefect when it
    cannot be read)."""
    return np.asarray(image_to_rgb(open_image(Path(path), "image")), dtype=np.uint8)


def to_input_size(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 → the model's training size, with ingestion's bilinear resize."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR),
                      dtype=np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 → [B, 3, H, W] float in [0, 1] (as data.loading.decode_batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def probability_at(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """A probability map (float, model size) resized bilinearly to height × width."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape == (height, width):
        return prob
    return np.asarray(Image.fromarray(prob, mode="F").resize((width, height), Image.BILINEAR),
                      dtype=np.float32)


def mask_of(prob: np.ndarray) -> np.ndarray:
    return np.asarray(prob) > 0.5


@torch.inference_mode()
def segment(model: torch.nn.Module, images: list[np.ndarray], input_size: tuple[int, int],
            ) -> list[np.ndarray]:
    """Probability maps, each at its image's own size, of HxWx3 uint8 images (any sizes)."""
    batch = np.stack([to_input_size(im, input_size) for im in images])
    probs = torch.sigmoid(model(to_tensor(batch)).float())[:, 0].numpy()
    return [probability_at(p, im.shape[0], im.shape[1]) for p, im in zip(probs, images,
                                                                          strict=True)]
