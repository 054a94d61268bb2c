"""Images two datasets share: an "external" test set must hold none that a run trained or was
chosen on.

Scored on images it trained on (or whose Dice chose its epoch and its configuration), a model
says nothing about another site — an easy mistake once one collection is held out of a folder
(`htl-ray data ingest --drop`) and a run still reads the folder's full ingest. Images are
compared pixel for pixel (sha256 of the stored pixels: both datasets at the same `--size`, as
external evaluation requires) and by id (the same image ingested at another size; ids may also
collide between sites, so an id alone is reported, not refused, by the callers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from htl_ray.data.schema import RECORDS_FILE
from htl_ray.errors import UserError, first_line

TRAINED_ON = ("train", "val")      # what a run trains on, and chooses its epoch and config on
BATCH_ROWS = 256                   # pixels read a batch at a time: memory stays flat at 512 px+


@dataclass(frozen=True)
class Overlap:
    """How many of an external dataset's `total` test images are in the training data's
    train or val split: pixel for pixel (`same_pixels`), or by id only (`same_id_only`)."""

    total: int
    same_pixels: int
    same_id_only: int


def _rows(dataset: Path, splits: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(id, pixels) of the rows of `splits`, a batch at a time; a records file that cannot be
    read is the user's to mend (a copy cut short), named."""
    path = dataset / RECORDS_FILE
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS,
                                                       columns=["id", "image", "split"]):
            rows = batch.to_pydict()
            for rid, image, split in zip(rows["id"], rows["image"], rows["split"],
                                         strict=True):
                if split in splits:
                    yield rid, image
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable records file ({first_line(exc)}); ingest "
                        "the dataset again") from None


def shared_images(external: str | Path, training: str | Path, *,
                  split: str = "test") -> Overlap | None:
    """The images of `external`'s `split` also in `training`'s train or val split; None when
    `training`'s records are not here to compare (the run that needs them says so itself)."""
    external, training = Path(external), Path(training)
    if not (training / RECORDS_FILE).is_file():
        return None
    seen_pixels, seen_ids = set(), set()
    for rid, image in _rows(training, TRAINED_ON):
        seen_pixels.add(hashlib.sha256(image).digest())
        seen_ids.add(rid)
    same_pixels = same_id_only = total = 0
    for rid, image in _rows(external, (split,)):
        total += 1
        if hashlib.sha256(image).digest() in seen_pixels:
            same_pixels += 1
        elif rid in seen_ids:
            same_id_only += 1
    return Overlap(total, same_pixels, same_id_only)
