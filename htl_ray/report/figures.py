"""The report's pictures, as PNG data URIs so the HTML file stands alone."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from htl_ray.config import ModelConfig
from htl_ray.data.schema import RECORDS_FILE, decode_image, decode_mask


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def score_histogram(htl: pd.DataFrame) -> str:
    """Distribution of h, HTL samples in colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    h = htl["h"].to_numpy()
    bins = np.linspace(0, max(float(h.max()), 1e-6), 31)
    ax.hist(h[~htl["selected"].to_numpy(bool)], bins=bins, color="#8da0cb", label="other")
    ax.hist(h[htl["selected"].to_numpy(bool)], bins=bins, color="#e41a1c", label="HTL")
    ax.set_xlabel("h (dense vs pruned disagreement, 1 − IoU)")
    ax.set_ylabel("training images")
    ax.legend()
    return data_uri(fig)


def _overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = image.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = 0.55 * out[m] + 0.45 * np.asarray(colour, np.float32)
    # outline: mask pixels with a background 4-neighbour
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out[edge] = colour
    return out.clip(0, 255).astype(np.uint8)


def gallery(data_path: str | Path, ids: list[str], model_cfg: dict[str, Any],
            state_dict: dict[str, Any], sparsity: float, method: str,
            scores: dict[str, float]) -> list[tuple[str, str]]:
    """One row per image: image, ground truth, dense prediction, pruned prediction."""
    import pyarrow.parquet as pq

    from htl_ray.models import create_model
    from htl_ray.pruning import pruned_copy

    if not ids:
        return []
    rows = pq.read_table(Path(data_path) / RECORDS_FILE,
                         columns=["id", "image", "mask", "height", "width"],
                         filters=[("id", "in", ids)]).to_pylist()
    by_id = {r["id"]: r for r in rows}
    dense = create_model(ModelConfig(**model_cfg))
    dense.load_state_dict(state_dict)
    dense.eval()
    pruned = pruned_copy(dense, sparsity, method).eval()
    plt = _plt()
    out = []
    for sid in ids:
        r = by_id[sid]
        image = decode_image(r["image"], r["height"], r["width"])
        mask = decode_mask(r["mask"], r["height"], r["width"])
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            d = (dense(x)[0, 0] > 0).numpy()
            p = (pruned(x)[0, 0] > 0).numpy()
        fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
        panels = [(image, "image"), (_overlay(image, mask, (0, 200, 0)), "ground truth"),
                  (_overlay(image, d, (30, 110, 255)), "dense prediction"),
                  (_overlay(image, p, (255, 60, 0)), f"pruned {sparsity:.0%}")]
        for ax, (img, title) in zip(axes, panels, strict=True):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{sid}   h = {scores[sid]:.3f}", fontsize=10)
        out.append((sid, data_uri(fig)))
    return out
