"""Reading one image/mask pair into training-resolution arrays, with every defect named.

A defect either raises `RecordDefect` (the record cannot be used and is quarantined) or is
returned as a note on a usable record (e.g. a grey-level mask that was binarised).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Refuse images whose decoded size would exhaust memory (decompression bombs); real dermoscopy
# images are at most a few tens of megapixels.
MAX_PIXELS = 120_000_000


class RecordDefect(Exception):
    """A record that cannot be used; `reason` is a stable key used in the ingest report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Pair:
    """A decoded, resized image/mask pair and what was noticed on the way."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8 in {0, 1}
    orig_height: int
    orig_width: int
    mask_binarised: bool
    area_fraction: float
    contrast: float | None
    orig_mask: np.ndarray | None = None   # bool, the original size (None: same as `mask`)


def open_image(path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            im = Image.open(path)
            im.load()
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RecordDefect(f"unreadable_{what}",
                           f"{path}: too large to decode safely ({exc})") from None
    except FileNotFoundError:
        raise RecordDefect(f"missing_{what}", f"{path}: file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise RecordDefect(f"unreadable_{what}", f"{path}: {type(exc).__name__}: {exc}") from None


def image_to_rgb(im: Image.Image) -> Image.Image:
    """Greyscale, palette, RGBA and 16-bit images all become 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = arr.max() or 1.0
        im = Image.fromarray((arr / peak * 255).astype(np.uint8), "L")
    return im.convert("RGB")


def mask_to_binary(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Return (bool mask, was_binarised). Binary masks are {0,1}, {0,255} or (16-bit)
    {0,65535}; anything else is thresholded at >127 of the 8-bit range (16-bit masks are
    scaled first) and reported."""
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.dtype == np.bool_:
        return arr, False
    values = set(np.unique(arr).tolist())
    if any(values <= {0, full} for full in (1, 255, 65535)):   # 1-, 8- and 16-bit binary masks
        return arr > 0, False
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64) / (65535.0 if arr.max() > 255 else 255.0) * 255.0
    return arr > 127, True


def lesion_contrast(image: np.ndarray, mask: np.ndarray) -> float | None:
    """Colour distance between mean lesion and mean skin colour, scaled to [0, 1].
    Undefined (None) when the mask is empty or covers the whole image."""
    m = mask.astype(bool)
    if m.all() or not m.any():
        return None
    lesion = image[m].reshape(-1, 3).mean(0)
    skin = image[~m].reshape(-1, 3).mean(0)
    return float(np.linalg.norm(lesion - skin) / (255.0 * np.sqrt(3)))


def resize_pair(image: Image.Image, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to size×size: bilinear for the image, bilinear-then-threshold for the mask (smooth
    borders, still binary)."""
    img = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    m = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((size, size), Image.BILINEAR)
    return img, (np.asarray(m) > 127).astype(np.uint8)


def load_pair(image_path: Path, mask_path: Path | None, size: int,
              allow_empty_mask: bool = False) -> Pair:
    """Decode, validate and resize one pair. Raises RecordDefect for unusable records."""
    image = open_image(image_path, "image")
    if mask_path is None:
        raise RecordDefect("missing_mask", f"{image_path}: no mask file found")
    mask_im = open_image(mask_path, "mask")
    if image.size != mask_im.size:
        raise RecordDefect("size_mismatch", f"image {image.size[0]}x{image.size[1]} vs mask "
                           f"{mask_im.size[0]}x{mask_im.size[1]} ({mask_path.name})")
    width, height = image.size
    mask, binarised = mask_to_binary(mask_im)
    if not mask.any() and not allow_empty_mask:
        raise RecordDefect("empty_mask", f"{mask_path}: mask has no lesion pixel")
    rgb = image_to_rgb(image)
    img_arr, mask_arr = resize_pair(rgb, mask, size)
    return Pair(
        image=img_arr,
        mask=mask_arr,
        orig_height=height,
        orig_width=width,
        mask_binarised=binarised,
        area_fraction=float(mask_arr.mean()),
        contrast=lesion_contrast(img_arr, mask_arr),
        orig_mask=None if (height, width) == mask_arr.shape else mask,
    )
