"""htl_ray.data.images: one image/mask pair decoded and resized, with exact values — 16-bit and
palette images made 8-bit RGB, masks of every bit depth made binary (and said so when they
were not), the lesion's contrast, the resize — and each unusable record's defect named with
its file; `--size` checked against its range and this machine's memory."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from htl_ray.data.images import (
    MAX_SIZE,
    RecordDefect,
    check_dataset_size,
    image_to_rgb,
    lesion_contrast,
    load_pair,
    mask_to_binary,
    open_image,
    resize_pair,
)
from htl_ray.errors import UserError

BOX = (slice(8, 20), slice(10, 30))                   # the lesion: 12 × 20 of a 30 × 40 image


def _write_pair(folder, name="a", w=40, h=30, mask_values=(0, 255), image_suffix=".png"):
    image = np.full((h, w, 3), 200, np.uint8)
    image[BOX] = (60, 40, 20)
    mask = np.full((h, w), mask_values[0], np.uint8)
    mask[BOX] = mask_values[1]
    ip, mp = folder / f"{name}{image_suffix}", folder / f"{name}_mask.png"
    Image.fromarray(image).save(ip, **({"quality": 100} if image_suffix == ".jpg" else {}))
    Image.fromarray(mask).save(mp)
    return ip, mp


# ------------------------------------------------------------------ --size


def test_the_size_must_be_8_to_max_size_pixels():
    check_dataset_size("--size", 8, 10)
    check_dataset_size("--size", MAX_SIZE, 1)
    for bad in (7, MAX_SIZE + 1, 0):
        with pytest.raises(UserError, match=rf"^--size {bad}: expected 8 to {MAX_SIZE} pixels$"):
            check_dataset_size("--size", bad, 10)


def test_a_dataset_over_half_the_memory_is_refused_before_any_image_is_read():
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    images = int(have / 2 / (1024 * 1024 * 4)) + 1            # just over half at 1024²
    with pytest.raises(UserError, match=rf"^data.size 1024: {images} images at 1024x1024 need "
                                        r"about [\d.]+ GiB .* use a smaller data.size$"):
        check_dataset_size("data.size", 1024, images)
    check_dataset_size("data.size", 1024, images - 2)           # just under: accepted


# ------------------------------------------------------------------ decoding


def test_16_bit_and_32_bit_images_are_scaled_by_their_peak_to_8_bit_rgb():
    for arr in (np.array([[0, 1000, 2000]], np.uint16), np.array([[0, 50000, 100000]], np.int32)):
        rgb = np.asarray(image_to_rgb(Image.fromarray(arr)))
        assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
        assert rgb[0, :, 0].tolist() == [0, 127, 255]
        assert (rgb == rgb[..., :1]).all()                    # grey: three equal channels


def test_grey_palette_and_rgba_images_become_rgb():
    rgb = image_to_rgb(Image.fromarray(np.array([[10, 250]], np.uint8), "L"))
    assert rgb.mode == "RGB" and np.asarray(rgb).tolist() == [[[10] * 3, [250] * 3]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert np.asarray(image_to_rgb(palette)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    rgba = Image.fromarray(np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8), "RGBA")
    assert np.asarray(image_to_rgb(rgba)).tolist() == [[[1, 2, 3], [4, 5, 6]]]
    same = Image.new("RGB", (2, 2))
    assert image_to_rgb(same) is same


def test_binary_masks_of_every_bit_depth_are_kept_and_others_thresholded_and_reported():
    def binary(arr, mode=None):
        mask, binarised = mask_to_binary(Image.fromarray(np.array(arr), mode))
        return mask.astype(int).tolist(), binarised

    assert binary(np.array([[0, 1, 1]], np.uint8)) == ([[0, 1, 1]], False)
    assert binary(np.array([[0, 255, 0]], np.uint8)) == ([[0, 1, 0]], False)
    assert binary(np.array([[65535, 0]], np.uint16)) == ([[1, 0]], False)
    assert binary(np.array([[0, 0]], np.uint8)) == ([[0, 0]], False)       # empty: binary
    # grey levels: > 127 of 8 bits is lesion, and the mask is reported as binarised
    assert binary(np.array([[10, 127, 128, 200]], np.uint8)) == ([[0, 0, 1, 1]], True)
    # 16-bit grey levels are scaled to 8 bits first: 30000 → 116.7, 40000 → 155.6
    assert binary(np.array([[0, 30000, 40000]], np.uint16)) == ([[0, 0, 1]], True)
    # an RGB(A) mask: its brightest colour channel; alpha is ignored
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 1] = (0, 255, 0, 255)
    rgba[0, 2] = (0, 0, 0, 255)
    assert binary(rgba, "RGBA") == ([[0, 1, 0]], False)
    bits = Image.new("1", (3, 1))
    bits.putpixel((2, 0), 1)
    mask, binarised = mask_to_binary(bits)
    assert mask.tolist() == [[False, False, True]] and not binarised


def test_lesion_contrast_is_the_colour_distance_scaled_to_one():
    image = np.full((4, 4, 3), 255, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    image[:2] = 0                                           # black lesion on white skin
    assert lesion_contrast(image, mask) == pytest.approx(1.0)
    image[:2] = (255, 0, 0)
    image[2:] = (0, 255, 0)                                 # red on green: √2 / √3
    assert lesion_contrast(image, mask) == pytest.approx(np.sqrt(2 / 3))
    image[:] = 90
    assert lesion_contrast(image, mask) == 0.0
    assert lesion_contrast(image, np.zeros_like(mask)) is None          # no lesion
    assert lesion_contrast(image, np.ones_like(mask)) is None           # no skin


def test_the_resized_pair_is_square_and_its_mask_still_binary():
    image = Image.fromarray(np.full((30, 40, 3), 77, np.uint8))
    mask = np.zeros((30, 40), bool)
    mask[BOX] = True
    img, m = resize_pair(image, mask, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and (img == 77).all()
    assert m.shape == (16, 16) and m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    # the box covers 20 % of the image; the resized one about as much
    assert m.mean() == pytest.approx(0.2, abs=0.04)


def test_open_image_names_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(RecordDefect) as caught:
        open_image(tmp_path / "gone.png", "mask")
    assert caught.value.reason == "missing_mask"
    assert caught.value.detail == f"{tmp_path / 'gone.png'}: file not found"
    assert str(caught.value) == f"missing_mask: {tmp_path / 'gone.png'}: file not found"
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(RecordDefect, match=r"^unreadable_image: .*notes\.png: "
                                           r"UnidentifiedImageError: ") as caught:
        open_image(tmp_path / "notes.png", "image")
    assert caught.value.reason == "unreadable_image"


# ------------------------------------------------------------------ a whole pair


def test_a_pair_is_decoded_resized_and_measured(tmp_path):
    ip, mp = _write_pair(tmp_path, image_suffix=".jpg")        # a real JPEG
    pair = load_pair(ip, mp, 20)
    assert (pair.orig_height, pair.orig_width) == (30, 40)
    assert pair.image.shape == (20, 20, 3) and pair.mask.shape == (20, 20)
    assert not pair.mask_binarised
    assert pair.area_fraction == pytest.approx(pair.mask.mean()) == pytest.approx(0.2, abs=0.03)
    lesion, skin = pair.image[pair.mask == 1].mean(0), pair.image[pair.mask == 0].mean(0)
    assert lesion[0] < 100 < 180 < skin[0]
    assert pair.contrast == pytest.approx(np.linalg.norm(lesion - skin) / (255 * np.sqrt(3)))
    assert 0.4 < pair.contrast < 0.6
    # the mask at the original size is kept for original-resolution scoring
    expected = np.zeros((30, 40), bool)
    expected[BOX] = True
    assert pair.orig_mask.dtype == np.bool_ and np.array_equal(pair.orig_mask, expected)


def test_a_pair_already_at_the_training_size_keeps_no_second_mask(tmp_path):
    ip, mp = _write_pair(tmp_path, w=32, h=32, mask_values=(0, 1))
    pair = load_pair(ip, mp, 32)
    assert pair.orig_mask is None
    assert pair.mask[BOX].all() and pair.mask.sum() == 12 * 20


def test_a_grey_level_mask_is_used_and_reported_as_binarised(tmp_path):
    ip, mp = _write_pair(tmp_path, mask_values=(20, 230))
    pair = load_pair(ip, mp, 16)
    assert pair.mask_binarised and 0.15 < pair.area_fraction < 0.25


@pytest.mark.parametrize("case, reason, detail", [
    ("tiny", "tiny_image", r"tiny\.png: 12x30, under the 16-pixel minimum side"),
    ("strip", "extreme_aspect_ratio", r"strip\.png: 130x30 \(aspect 4\.3:1, over 4:1\)"),
    ("nomask", "missing_mask", r"nomask\.png: no mask file found"),
    ("mismatch", "size_mismatch", r"image 40x30 vs mask 20x30 \(mismatch_mask\.png\)"),
    ("empty", "empty_mask", r"empty_mask\.png: mask has no lesion pixel"),
    ("full", "full_mask", r"full_mask\.png: every pixel is lesion"),
])
def test_an_unusable_pair_is_a_named_defect(tmp_path, case, reason, detail):
    ip, mp = _write_pair(tmp_path, case,
                         w={"tiny": 12, "strip": 130}.get(case, 40),
                         mask_values={"empty": (0, 0), "full": (255, 255)}.get(case, (0, 255)))
    if case == "mismatch":
        Image.new("L", (20, 30), 255).save(mp)
    with pytest.raises(RecordDefect, match=detail) as caught:
        load_pair(ip, None if case == "nomask" else mp, 16)
    assert caught.value.reason == reason


def test_an_empty_mask_is_allowed_when_asked_for(tmp_path):
    ip, mp = _write_pair(tmp_path, mask_values=(0, 0))
    pair = load_pair(ip, mp, 16, allow_empty_mask=True)
    assert pair.area_fraction == 0.0 and pair.contrast is None and not pair.mask.any()


def test_an_image_format_not_read_is_refused_by_its_name_alone(tmp_path):
    phone = tmp_path / "IMG_0001.HEIC"                       # not even there: never opened
    with pytest.raises(RecordDefect, match=r"\.HEIC images are not read; convert it to one of "
                                           r"\.jpg \.jpeg \.png") as caught:
        load_pair(phone, tmp_path / "IMG_0001.png", 16)
    assert caught.value.reason == "unsupported_format"
