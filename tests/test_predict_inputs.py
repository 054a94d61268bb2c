"""htl_ray.predict.inputs: what `htl-ray predict` reads. A real folder tree (upper-case
suffixes, hidden files, a text file, the output folder inside the input, a second link to a
folder) and real ingested datasets (Parquet records, one of them cut short); each INPUT mistake
is a ConfigError naming INPUT or --split and what was expected. No Ray, no model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from htl_ray.config import ConfigError
from htl_ray.data.layouts import IMAGE_SUFFIXES
from htl_ray.data.schema import read_table
from htl_ray.errors import UserError
from htl_ray.predict.inputs import dataset_images, discover, folder_images, unique_ids


def _png(path: Path, size=(8, 6), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """20 synthetic 16x16 images: 10 train, 5 val, 5 test."""
    from htl_ray.data.synth import synthesize

    out = tmp_path_factory.mktemp("inputs") / "ds"
    synthesize(out, n=20, size=16, seed=3, fractions=(0.5, 0.25, 0.25))
    return out


def test_a_folder_is_searched_recursively_in_sorted_order_and_every_non_image_is_named(
        tmp_path):
    src = tmp_path / "in"
    _png(src / "b.png")
    _png(src / "A.PNG")                                  # upper-case suffixes are images too
    _png(src / "sub" / "deeper" / "c.JPEG")
    (src / "sub" / "report.pdf").write_bytes(b"%PDF-1.4")
    (src / ".DS_Store").write_bytes(b"\0\0")             # hidden: neither read nor listed
    inputs = folder_images(src)
    assert inputs.kind == "folder" and inputs.notes == []
    assert [r["id"] for r in inputs.rows] == ["A", "b", "c"]
    assert [r["path"] for r in inputs.rows] == [
        str(src / "A.PNG"), str(src / "b.png"), str(src / "sub" / "deeper" / "c.JPEG")]
    assert [s["file"] for s in inputs.skipped] == [str(src / "sub" / "report.pdf")]
    reason = inputs.skipped[0]["reason"]
    assert reason.startswith("not an image file (suffixes read: ")
    assert all(suffix in reason for suffix in IMAGE_SUFFIXES)


def test_the_output_folder_inside_the_input_is_not_read_back(tmp_path):
    src = tmp_path / "in"
    _png(src / "x.png")
    _png(src / "pred" / "x_segmentation.png", mode="L")   # an earlier run's mask
    _png(src / "pred" / "nested" / "y.png")
    inputs = folder_images(src, exclude=src / "pred")
    assert [r["id"] for r in inputs.rows] == ["x"] and inputs.skipped == []
    # without the exclusion the masks would be predicted as images
    assert [r["id"] for r in folder_images(src).rows] == ["x", "x_segmentation", "y"]


def test_a_folder_reached_twice_through_links_is_searched_once_and_named(tmp_path):
    real = tmp_path / "photos"
    _png(real / "p.png")
    src = tmp_path / "in"
    src.mkdir()
    (src / "first").symlink_to(real)
    (src / "second").symlink_to(real)
    inputs = folder_images(src)
    assert [r["id"] for r in inputs.rows] == ["p"]
    assert inputs.rows[0]["path"] == str(src / "first" / "p.png")
    assert inputs.skipped == [{"file": str(src / "second"), "reason": "folder already searched "
                               "(a symbolic link loop or a second link to it)"}]


def test_clashing_file_names_get_path_ids_and_a_note(tmp_path):
    src = tmp_path / "in"
    for rel in ("day1/img.png", "day2/img.png", "day2/other.jpg", "img.bmp"):
        _png(src / rel)
    inputs = folder_images(src)
    ids = {Path(r["path"]).relative_to(src).as_posix(): r["id"] for r in inputs.rows}
    assert ids == {"day1/img.png": "day1__img", "day2/img.png": "day2__img",
                   "day2/other.jpg": "other", "img.bmp": "img"}
    assert inputs.notes == ["1 file name(s) occur more than once (e.g. 'img'): those images "
                            "are named by their relative path, '/' written '__'"]


def test_names_that_differ_only_in_the_case_of_the_suffix_fall_back_to_a_hash():
    paths = [Path("x.PNG"), Path("x.png"), Path("y.png")]
    ids, clashes = unique_ids(paths)
    expected = [f"x-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for p in ("x.PNG", "x.png")]
    assert ids == [*expected, "y"] and expected[0] != expected[1]
    assert clashes == ["x"]
    assert unique_ids([]) == ([], [])


def test_a_dataset_split_lists_its_ids_in_file_order(dataset):
    table = read_table(dataset)
    for split in ("train", "val", "test"):
        inputs = dataset_images(dataset, split)
        assert [r["id"] for r in inputs.rows] == table.loc[table["split"] == split,
                                                            "id"].tolist()
        assert inputs.kind == "dataset" and inputs.split == split
        assert inputs.source == str(dataset.resolve()) and inputs.skipped == []
    assert [r["id"] for r in dataset_images(dataset, "all").rows] == table["id"].tolist()
    assert len(dataset_images(dataset, "val").rows) == 5


def test_an_empty_split_and_a_cut_records_file_are_errors_naming_them(tmp_path):
    from htl_ray.data.synth import synthesize

    synthesize(tmp_path / "no_test", n=8, size=16, seed=0, fractions=(0.5, 0.5, 0.0))
    with pytest.raises(ConfigError, match=r"^--split: .*no_test has no rows in the 'test' "
                                          r"split$"):
        discover(tmp_path / "no_test", "test")
    records = tmp_path / "no_test" / "records.parquet"
    records.write_bytes(records.read_bytes()[:200])
    with pytest.raises(UserError, match=f"{records}: not a readable records file"):
        discover(tmp_path / "no_test", "train")


@pytest.mark.parametrize("case, split, message", [
    ("missing", None, r"INPUT: .*missing does not exist \(expected a folder of images, or a "
                      r"dataset folder with --split\)"),
    ("dataset", None, r"INPUT: .*ds is an ingested dataset; name the split to predict with "
                      r"--split \(train, val, test or all\)"),
    ("folder", "val", r"--split val: INPUT .*folder is a folder of images, not an ingested "
                      r"dataset \(no records.parquet there\)"),
    ("file", None, r"INPUT: .*one.png is a file; give the folder that holds the images"),
    ("no_images", None, r"INPUT: no image files under .*no_images \(suffixes read: .jpg"),
])
def test_discover_refuses_each_input_mistake_naming_the_option(dataset, tmp_path, case, split,
                                                               message):
    _png(tmp_path / "folder" / "one.png")
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("not an image")
    where = {"missing": tmp_path / "missing", "dataset": dataset, "folder": tmp_path / "folder",
             "file": tmp_path / "folder" / "one.png", "no_images": tmp_path / "no_images"}
    with pytest.raises(ConfigError, match=message):
        discover(where[case], split)


def test_discover_reads_a_dataset_with_split_and_a_folder_without(dataset, tmp_path):
    _png(tmp_path / "folder" / "one.png")
    from_dataset = discover(dataset, "test")
    assert from_dataset.kind == "dataset" and len(from_dataset.rows) == 5
    assert all(set(r) == {"id"} for r in from_dataset.rows)       # pixels are read by actors
    from_folder = discover(str(tmp_path / "folder"), None, exclude=tmp_path / "out")
    assert from_folder.rows == [{"id": "one", "path": str(tmp_path / "folder" / "one.png")}]
