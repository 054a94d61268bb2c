"""htl_ray.data.overlap: which of an external dataset's test images a run trained or was chosen
on — pixel for pixel, or by id alone — on real Parquet datasets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from htl_ray.data.overlap import Overlap, shared_images
from htl_ray.data.schema import RECORDS_FILE


def _dataset(path, rows):
    """A records file of (id, pixels, split) rows: all `shared_images` reads."""
    path.mkdir(parents=True)
    ids, images, splits = zip(*rows, strict=True)
    pq.write_table(pa.table({"id": list(ids), "image": list(images), "split": list(splits)}),
                   path / RECORDS_FILE, row_group_size=2)
    return path


def test_pixels_in_train_or_val_are_shared_an_id_alone_is_counted_apart_test_is_not(
        tmp_path, monkeypatch):
    import htl_ray.data.overlap as overlap

    monkeypatch.setattr(overlap, "BATCH_ROWS", 2)        # several batches on both sides
    training = _dataset(tmp_path / "train", [
        ("a", b"A", "train"), ("b", b"B", "val"), ("c", b"C", "test"), ("d", b"D", "train"),
        ("e", b"E", "train")])
    external = _dataset(tmp_path / "ext", [
        ("x1", b"A", "test"),          # trained on, under another name
        ("b", b"B", "test"),           # chosen on (val)
        ("c", b"C", "test"),           # the training data's own test split: never trained on
        ("d", b"D-256px", "test"),     # the same id, other pixels (another size, or a clash)
        ("y", b"Y", "test"),
        ("e", b"E", "val")])           # not the split scored
    assert shared_images(external, training) == Overlap(total=5, same_pixels=2,
                                                        same_id_only=1)
    assert shared_images(external, training, split="val") == Overlap(1, 1, 0)
    assert shared_images(external, tmp_path / "absent") is None


def test_a_records_file_cut_short_is_named_not_a_traceback(tmp_path):
    from htl_ray.errors import UserError

    training = _dataset(tmp_path / "train", [("a", b"A", "train"), ("b", b"B", "val")])
    external = _dataset(tmp_path / "ext", [("x", b"X", "test"), ("y", b"Y", "test")])
    data = (external / RECORDS_FILE).read_bytes()
    (external / RECORDS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"{external / RECORDS_FILE}: not a readable records "
                                        r"file .*ingest the dataset again"):
        shared_images(external, training)
