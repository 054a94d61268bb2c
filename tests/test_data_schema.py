"""htl_ray.data.schema: records written to real Parquet in the one schema and read back
(pixels, metadata, a split pushed into the read), masks through PNG, and a dataset folder
whose records or manifest are missing, cut short or not JSON named with the file."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from htl_ray.data.schema import (
    LAYOUT,
    MANIFEST_FILE,
    RECORDS_FILE,
    REPORT_FILE,
    SCHEMA,
    TABLE_COLUMNS,
    check_records,
    decode_image,
    decode_mask,
    decode_mask_png,
    encode_mask_png,
    has_column,
    read_manifest,
    read_split_table,
    read_table,
    write_records,
)
from htl_ray.errors import UserError


def _row(i: int, split: str, h: int = 4, w: int = 6) -> dict:
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) + i
    mask = np.zeros((h, w), np.uint8)
    mask[1:3, :i + 1] = 1
    return {"id": f"r{i}", "image": image.tobytes(), "mask": mask.tobytes(), "height": h,
            "width": w, "orig_height": 2 * h, "orig_width": 2 * w, "age": 30.0 + i,
            "sex": "f" if i % 2 else "m", "split": split, "area_fraction": float(mask.mean()),
            "source": f"images/r{i}.png", "mask_binarised": i == 2}


@pytest.fixture
def dataset(tmp_path):
    rows = [_row(i, split) for i, split in enumerate(["train", "val", "train", "test"])]
    write_records(rows, tmp_path / "ds")
    (tmp_path / "ds" / MANIFEST_FILE).write_text(json.dumps({"schema_version": 2, "rows": 4}))
    return tmp_path / "ds"


def test_records_round_trip_through_parquet_with_their_pixels(dataset):
    assert pq.read_schema(dataset / RECORDS_FILE).names == [f.name for f in SCHEMA]
    df = read_table(dataset, columns=["id", "image", "mask", "height", "width"])
    assert df["id"].tolist() == ["r0", "r1", "r2", "r3"]                   # file order
    for i, row in df.iterrows():
        expected = _row(i, "train")
        image = decode_image(row["image"], row["height"], row["width"])
        assert image.shape == (4, 6, 3) and image.dtype == np.uint8
        assert np.array_equal(image.tobytes(), expected["image"])
        mask = decode_mask(row["mask"], 4, 6)
        assert mask.shape == (4, 6) and int(mask.sum()) == 2 * (i + 1)


def test_the_default_table_is_every_column_but_the_pixels_and_unset_ones_are_null(dataset):
    df = read_table(dataset)
    assert list(df.columns) == TABLE_COLUMNS
    assert {"image", "mask", "orig_mask"}.isdisjoint(df.columns)
    r1 = df.set_index("id").loc["r1"]
    assert (r1["age"], r1["sex"], r1["orig_width"], r1["source"]) == (31.0, "f", 12,
                                                                     "images/r1.png")
    assert r1["area_fraction"] == pytest.approx(4 / 24)
    assert df["diagnosis"].isna().all() and df["contrast"].isna().all()   # not given: null
    assert df["mask_binarised"].tolist() == [False, False, True, False]


def test_a_split_is_read_alone(dataset):
    assert read_table(dataset, ["id"], split="train")["id"].tolist() == ["r0", "r2"]
    assert read_table(dataset, ["id"], split="test")["id"].tolist() == ["r3"]
    table = read_split_table(dataset / RECORDS_FILE, ["id", "age"], "val")
    assert table.column_names == ["id", "age"] and table.to_pydict() == {"id": ["r1"],
                                                                        "age": [31.0]}


def test_rows_are_written_compressed_in_groups_of_128(tmp_path):
    path = write_records([_row(0, "train", 2, 2) for _ in range(130)], tmp_path / "big")
    meta = pq.ParquetFile(path).metadata
    assert path == tmp_path / "big" / RECORDS_FILE
    assert meta.num_rows == 130 and meta.num_row_groups == 2
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_has_column_reads_the_schema(dataset):
    assert has_column(dataset, "orig_mask") and has_column(str(dataset), "planted_hard")
    assert not has_column(dataset, "features")


def test_a_mask_survives_png_at_its_own_size():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    png = encode_mask_png(mask)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_mask_png(png), mask)
    assert np.array_equal(decode_mask_png(encode_mask_png(mask.astype(np.uint8))), mask)
    stored = np.asarray(Image.open(io.BytesIO(png)))
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}    # 0/255 on disk


def test_a_folder_without_records_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / RECORDS_FILE}: no dataset here; "
                                                "create one with `htl-ray data ingest` or "
                                                "`htl-ray data synth`$"):
        read_table(tmp_path)


def test_a_records_file_cut_short_is_named_with_the_option(dataset):
    path = dataset / RECORDS_FILE
    path.write_bytes(path.read_bytes()[:200])               # a copy interrupted
    with pytest.raises(UserError, match=rf"^{path}: not a readable records file \(.+\); "
                                        "ingest the dataset again$"):
        read_split_table(path, ["id"])
    with pytest.raises(UserError, match=rf"^data.path: {path} is not a readable Parquet file "
                                        r"\(.+\); ingest the dataset again$"):
        check_records(dataset, "data.path")


def test_check_records_returns_the_manifest_or_names_what_is_missing(dataset):
    assert check_records(dataset, "data.path") == {"schema_version": 2, "rows": 4}
    (dataset / MANIFEST_FILE).unlink()
    with pytest.raises(UserError, match=rf"^DATA: {dataset / MANIFEST_FILE}: missing dataset "
                                        "manifest$"):
        check_records(dataset, "DATA")
    (dataset / MANIFEST_FILE).write_text("{}")
    (dataset / RECORDS_FILE).unlink()
    with pytest.raises(UserError, match=rf"^DATA: .*{RECORDS_FILE}"):
        check_records(dataset, "DATA")


def test_a_manifest_must_be_a_json_object(tmp_path):
    path = tmp_path / MANIFEST_FILE
    with pytest.raises(FileNotFoundError, match="missing dataset manifest"):
        read_manifest(tmp_path)
    path.write_text('{"rows": 3,')
    with pytest.raises(UserError, match=rf"^{path}: not readable as JSON \(.+\); ingest the "
                                        "dataset again$"):
        read_manifest(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match=rf"^{path}: not a dataset manifest; ingest the dataset "
                                        "again$"):
        read_manifest(tmp_path)
    path.write_text('{"fingerprint": "abc"}')
    assert read_manifest(str(tmp_path)) == {"fingerprint": "abc"}


def test_the_layout_describes_every_file_of_a_dataset_folder():
    assert set(LAYOUT) == {RECORDS_FILE, MANIFEST_FILE, REPORT_FILE, "quarantine/<reason>/"}
    for column in ("orig_mask", "planted_hard", "mask_binarised"):
        assert column in LAYOUT[RECORDS_FILE]
