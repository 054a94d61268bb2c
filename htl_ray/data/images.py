"""Reading one image/mask pair into training-resolution arrays, with every defect named.

A defect either raises `RecordDefect` (the record cannot be used and is quarantined) or is
returned as a note on a usable record (e.g. a grey-level mask that was binarised).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Refuse images whose decoded size would exhaust memory (decompression bombs); real dermoscopy
# images are at most a few tens of megapixels.
MAX_PIXELS = 120_000_000
# Image formats ingestion reads (Pillow decodes them all), and image formats it knows but does
# not read: a file of the latter is quarantined under `unsupported_format`, with its mask.
READ_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
UNREAD_SUFFIXES = (".heic", ".heif", ".avif", ".jp2", ".j2k", ".dcm", ".dicom", ".svg", ".psd",
                   ".raw", ".dng", ".nef", ".cr2", ".arw")
# Degenerate records: a side this short holds no lesion worth learning, and squashing a strip
# longer than this ratio to a square distorts the lesion beyond recognition.
MIN_SIDE = 16
MAX_ASPECT = 4.0
# The largest training resolution `--size` accepts: rows are held in memory while a dataset
# is written (size² × 4 bytes an image), and 2048² is beyond any lesion segmentation model.
MAX_SIZE = 2048


def check_dataset_size(key: str, size: int, images: int) -> None:
    """`--size` within [8, MAX_SIZE], and `images` rows of it fitting in half this machine's
    memory: a clear error before any image is read, not a MemoryError after."""
    from htl_ray.errors import UserError

    if not 8 <= size <= MAX_SIZE:
        raise UserError(f"{key} {size}: expected 8 to {MAX_SIZE} pixels")
    need = images * size * size * 4
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have / 2:
        raise UserError(f"{key} {size}: {images} images at {size}x{size} need about "
                        f"{need / 2**30:.1f} GiB in memory while the dataset is written, over "
                        f"half of this machine's {have / 2**30:.0f} GiB; use a smaller {key}")


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
    if image_path.suffix.lower() in UNREAD_SUFFIXES:
        raise RecordDefect("unsupported_format", f"{image_path}: {image_path.suffix} images are "
                           f"not read; convert it to one of {' '.join(READ_SUFFIXES)}")
    image = open_image(image_path, "image")
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise RecordDefect("tiny_image", f"{image_path}: {width}x{height}, under the "
                           f"{MIN_SIDE}-pixel minimum side")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise RecordDefect("extreme_aspect_ratio", f"{image_path}: {width}x{height} (aspect "
                           f"{max(width, height) / min(width, height):.1f}:1, over "
                           f"{MAX_ASPECT:g}:1); resizing it to a square would distort the lesion")
    if mask_path is None:
        raise RecordDefect("missing_mask", f"{image_path}: no mask file found")
    mask_im = open_image(mask_path, "mask")
    if image.size != mask_im.size:
        raise RecordDefect("size_mismatch", f"image {image.size[0]}x{image.size[1]} vs mask "
                           f"{mask_im.size[0]}x{mask_im.size[1]} ({mask_path.name})")
    mask, binarised = mask_to_binary(mask_im)
    if not mask.any() and not allow_empty_mask:
        raise RecordDefect("empty_mask", f"{mask_path}: mask has no lesion pixel")
    if mask.all():
        raise RecordDefect("full_mask", f"{mask_path}: every pixel is lesion (no skin to tell "
                           "it from: a mask saved inverted or blank?)")
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
