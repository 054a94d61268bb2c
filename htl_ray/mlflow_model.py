"""The trained model as an MLflow Model (pyfunc), preprocessing inside.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")     # or models:/<name>/<version>
    masks = model.predict(images)     # uint8 [N, H, W, 3] RGB → uint8 [N, H, W] masks, 0/255

The model resizes each image to its training size, scales it to [0, 1], segments it and
resizes the probability map back to the input's own size before thresholding at 0.5 — the
same path as `htl-ray predict` (htl_ray.inference), so both give the same masks. One image is
`images[None]`; images of different sizes go in separate calls. The htl_ray package travels
inside the model (`code_paths`), so loading needs torch, segmentation-models-pytorch, Pillow
and MLflow, but not htl-ray itself.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from htl_ray.inference import BUNDLE_ARTIFACT, ModelBundle, segment

REQUIREMENTS = ("torch", "segmentation-models-pytorch", "pillow", "numpy", "mlflow")

class HtlSegmentationModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a ModelBundle: RGB images in, binary masks at their size out."""

    # the signature (uint8 [N, H, W, 3]) validates the input; no type-hint validation
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])
        self.model = self.bundle.build()

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images [N, H, W, 3], got shape {images.shape}")
        probs = segment(self.model, list(images.astype(np.uint8)), self.bundle.input_size)
        return np.stack([(p > 0.5).astype(np.uint8) * 255 for p in probs])


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def requirements() -> list[str]:
    """Pins of what loading needs, from this environment (no slow inference by MLflow)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


@contextlib.contextmanager
def _no_progress_bars():
    """MLflow copies artifacts with a progress bar per file (noise in a training log): off while
    saving, and the process's environment restored after."""
    import logging

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    # and its warning that a Python object is saved with cloudpickle: the class is ours, and
    # its code travels with the model (code_paths)
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pyfunc_log.setLevel(level)
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def save_mlflow_model(bundle: ModelBundle, dest: Path) -> Path:
    """Write `bundle` as an MLflow Model folder at `dest` (which must not exist)."""
    import tempfile

    import htl_ray

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _no_progress_bars():
        warnings.simplefilter("ignore")
        bundle_dir = bundle.save(Path(tmp) / BUNDLE_ARTIFACT)
        mlflow.pyfunc.save_model(
            path=str(dest), python_model=HtlSegmentationModel(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)}, signature=signature(),
            code_paths=[str(Path(htl_ray.__file__).parent)], pip_requirements=requirements())
    return dest
