"""Synthetic dermoscopy-like data with *planted* hard subgroups (docs/method.md §Synthetic data).

Lesion size, contrast, colour, border irregularity and hair occlusion depend on age, sex and
site. Two subgroups are made hard on purpose, and flagged in `planted_hard` / `hard_reason`:

- site `head/neck`: small lesions under heavy hair;
- age >= 80: low lesion/skin contrast with irregular borders.

Because the hard subgroup is known, benchmarks can measure whether HTL scoring finds it.
Everything is drawn from one `numpy.random.Generator(seed)`, so a seed gives identical data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from htl_ray.data.images import lesion_contrast
from htl_ray.data.ingest import IngestReport, finalize_dataset
from htl_ray.errors import UserError

logger = logging.getLogger(__name__)

SITES = ("anterior torso", "posterior torso", "lower extremity", "upper extremity",
         "head/neck", "palms/soles")
SITE_P = (0.24, 0.26, 0.19, 0.17, 0.10, 0.04)
DIAGNOSES = ("NV", "MEL", "BKL")
DIAGNOSIS_P = (0.7, 0.2, 0.1)
BROWN = np.array([95.0, 55.0, 35.0])


def _skin(rng: np.random.Generator) -> np.ndarray:
    tone = rng.uniform(0.0, 1.0)
    light, dark = np.array([236.0, 200.0, 180.0]), np.array([170.0, 120.0, 90.0])
    return light * (1 - tone) + dark * tone


def _lesion_mask(rng: np.random.Generator, size: int, radius: float,
                 irregularity: float) -> np.ndarray:
    """A star-shaped blob r(θ) = r0·(1 + Σ a_k cos(kθ + φ_k)), centred near the middle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = (size / 2) + rng.normal(0, size * 0.06, 2)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    boundary = np.ones_like(theta)
    for k in range(2, 7):
        boundary += irregularity * rng.uniform(0.2, 1.0) / k * np.cos(k * theta
                                                                       + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.75, 1.0)
    return r * (1 + (1 - aspect) * np.cos(theta) ** 2) <= radius * size * boundary


def _draw_hair(img: Image.Image, rng: np.random.Generator, count: int) -> None:
    draw = ImageDraw.Draw(img)
    size = img.size[0]
    for _ in range(count):
        x0, y0 = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.4, 1.2) * size
        bend = rng.normal(0, 0.15)
        pts = []
        for t in np.linspace(0, 1, 8):
            a = angle + bend * t
            pts.append((x0 + np.cos(a) * length * (t - 0.5), y0 + np.sin(a) * length * (t - 0.5)))
        shade = int(rng.uniform(15, 60))
        draw.line(pts, fill=(shade, shade - 5 if shade > 5 else 0, 0),
                  width=max(1, int(round(size / 96 * rng.uniform(0.8, 1.6)))))


def synth_sample(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """One synthetic sample with its demographics, planted flags, image and mask."""
    age = float(rng.choice(np.arange(20, 90, 5)))
    sex = str(rng.choice(["female", "male"]))
    site = str(rng.choice(SITES, p=SITE_P))
    diagnosis = str(rng.choice(DIAGNOSES, p=DIAGNOSIS_P))

    small_hairy = site == "head/neck"
    low_contrast = age >= 80
    radius = rng.uniform(0.16, 0.34) * (0.45 if small_hairy else 1.0)
    contrast = rng.uniform(0.12, 0.24) if low_contrast else rng.uniform(0.5, 0.9)
    irregularity = rng.uniform(0.5, 0.9) if (low_contrast or diagnosis == "MEL") else \
        rng.uniform(0.05, 0.35)
    hair = int(rng.integers(10, 18)) if small_hairy else int(rng.integers(0, 3 if sex == "female"
                                                                          else 5))

    skin = _skin(rng)
    mask = _lesion_mask(rng, size, radius, irregularity)
    lesion_col = skin * (1 - contrast) + BROWN * contrast
    if diagnosis == "MEL":
        lesion_col = lesion_col * rng.uniform(0.8, 0.95)
    yy, xx = np.mgrid[0:size, 0:size] / size
    vignette = 1 - 0.25 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 4
    img = np.broadcast_to(skin, (size, size, 3)).copy()
    mottling = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
    mottling = np.kron(mottling, np.ones((8, 8)))[:size, :size, None] * 8 * contrast
    soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(
        ImageFilter.GaussianBlur(radius=max(0.5, size / 128))), dtype=np.float64)[..., None] / 255
    img = img * (1 - soft) + (lesion_col + mottling) * soft
    img = img * vignette[..., None] + rng.normal(0, 6, img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _draw_hair(pil, rng, hair)
    image = np.asarray(pil, dtype=np.uint8)

    reasons = [r for r, on in (("small lesion under hair (head/neck)", small_hairy),
                               ("low contrast (age>=80)", low_contrast)) if on]
    mask_u8 = mask.astype(np.uint8)
    return {
        "image": image, "mask": mask_u8, "age": age, "sex": sex, "site": site,
        "diagnosis": diagnosis, "planted_hard": bool(reasons),
        "hard_reason": "; ".join(reasons) or None,
    }


def generate(n: int, size: int, seed: int = 0, repeat_fraction: float = 0.05) -> list[dict]:
    """`n` rows in the dataset schema. A `repeat_fraction` of them are second views of the
    previous lesion (same lesion_id), so the lesion-aware split is exercised."""
    if n < 1:
        raise UserError(f"n={n}: need at least one sample")
    if size < 16:
        raise UserError(f"size={size}: need at least 16 pixels")
    rng = np.random.default_rng(seed)
    rows = []
    lesion = 0
    for i in range(n):
        s = synth_sample(rng, size)
        if i == 0 or rng.uniform() >= repeat_fraction:
            lesion += 1
        rows.append({
            "id": f"SYN_{i:06d}", "image": s["image"].tobytes(), "mask": s["mask"].tobytes(),
            "height": size, "width": size, "orig_height": size, "orig_width": size,
            "age": s["age"], "sex": s["sex"], "site": s["site"], "diagnosis": s["diagnosis"],
            "lesion_id": f"SYNL_{lesion:06d}",
            "area_fraction": float(s["mask"].mean()),
            "contrast": lesion_contrast(s["image"], s["mask"]),
            "source": "synthetic", "mask_binarised": False,
            "planted_hard": s["planted_hard"], "hard_reason": s["hard_reason"],
        })
    return rows


def synthesize(out: str | Path, *, n: int = 400, size: int = 64, seed: int = 0,
               fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> dict[str, Any]:
    """Generate and write a synthetic dataset in the ingest schema (with manifest and report)."""
    from htl_ray.data.images import check_dataset_size
    from htl_ray.data.split import validate_fractions
    from htl_ray.paths import check_writable_dir

    if n < 1:
        raise UserError(f"--n {n}: need at least one sample")
    if size < 16:
        raise UserError(f"--size {size}: synthetic lesions need at least 16 pixels")
    check_dataset_size("--size", size, n)
    validate_fractions(fractions)
    check_writable_dir(out, "--out")
    rows = generate(n, size, seed)
    report = IngestReport(source=f"synthetic(n={n}, size={size}, seed={seed})",
                          layout="synthetic", total_images=n)
    hard = sum(r["planted_hard"] for r in rows)
    report.notes.append(f"planted hard: {hard}/{n} "
                        f"(head/neck small+hair, age>=80 low contrast)")
    params = {"layout": "synthetic", "n": n, "size": size, "seed": seed,
              "fractions": list(fractions)}
    manifest = finalize_dataset(rows, Path(out), report, params=params, fractions=fractions,
                                seed=seed)
    return {"manifest": manifest, "report": report}
