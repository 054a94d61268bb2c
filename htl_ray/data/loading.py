"""Ray Dataset access to an ingested dataset, and decoding of its batches into tensors."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from htl_ray.data.schema import RECORDS_FILE, read_split_table

if TYPE_CHECKING:
    import ray.data

TRAIN_COLUMNS = ["id", "image", "mask", "height", "width"]


def records_path(dataset_dir: str | Path) -> str:
    path = Path(dataset_dir) / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset; create one with `htl-ray data ingest` or "
                                "`htl-ray data synth`")
    return str(path.resolve())


def uncompressed_bytes(path: str | Path) -> int:
    """The records file's size in memory, from its Parquet footer (without reading it)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def split_dataset(dataset_dir: str | Path, split: str, *, limit: int = 0,
                  columns: list[str] | None = None,
                  driver_read_max_bytes: int | None = None) -> ray.data.Dataset:
    """A materialised Ray Dataset of one split, rows in file order.

    Materialised in the driver before training starts: the trainers then reserve every CPU of a
    small machine without starving Ray Data of the CPUs it would need to read Parquet.

    A records file that fits in one Ray Data block uncompressed (`driver_read_max_bytes`,
    default the block size Ray Data cuts its reads at, 128 MiB; ISIC at 128 px is 125 MiB) is
    read here with pyarrow and handed to Ray as that one block: Ray Data's read tasks cost 4-20 s
    of start-up per split (bench/data_path.py). Ray Data would also have read it as one block,
    so both give the same rows, order and block, and a seeded run the same batches. Larger
    files keep the distributed read, so a big dataset never has to fit in the driver.
    """
    import ray.data

    cols = columns or TRAIN_COLUMNS
    path = records_path(dataset_dir)
    if driver_read_max_bytes is None:
        driver_read_max_bytes = (ray.data.DataContext.get_current().target_max_block_size
                                 or 128 << 20)
    if uncompressed_bytes(path) <= driver_read_max_bytes:
        table = read_split_table(path, cols, split)
        return ray.data.from_arrow(table.slice(0, limit) if limit else table).materialize()
    from ray.data.expressions import col

    ds = ray.data.read_parquet(path, columns=[*cols, "split"])
    ds = ds.filter(expr=col("split") == split).select_columns(cols)
    if limit:
        ds = ds.limit(limit)
    return ds.materialize()


def decode_batch(batch: dict[str, Any], device: torch.device | str | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Numpy batch of raw uint8 buffers → images [B,3,H,W] float in [0,1], masks [B,1,H,W].

    With `device` (a GPU), the uint8 pixels are moved first and converted there: a quarter of
    the bytes cross the bus, and the host does no float work. The values are the same."""
    h, w = int(batch["height"][0]), int(batch["width"][0])
    images = torch.from_numpy(
        np.stack([np.frombuffer(b, np.uint8) for b in batch["image"]]).reshape(-1, h, w, 3))
    masks = torch.from_numpy(
        np.stack([np.frombuffer(b, np.uint8) for b in batch["mask"]]).reshape(-1, 1, h, w))
    if device is not None:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
    img_t = images.permute(0, 3, 1, 2).float().div_(255.0)
    return img_t.contiguous(), masks.float()


@cache
def _decoding_collate() -> Any:
    from ray.data.collate_fn import NumpyBatchCollateFn

    class DecodeBatch(NumpyBatchCollateFn):
        """Ray Data calls this in its formatting thread, not in the consumer's."""

        def __call__(self, batch: dict[str, np.ndarray]):
            images, masks = decode_batch(batch)
            return images, masks, batch

    return DecodeBatch()


def iter_decoded(source, *, batch_size: int, local_shuffle_buffer_size: int | None = None,
                 local_shuffle_seed: int | None = None,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]:
    """(images, masks, the raw numpy batch) from a Ray Dataset or DataIterator.

    The same batches, in the same order, as `iter_batches` + `decode_batch`; but the decoding
    runs in the thread where Ray Data formats the next batch, so it overlaps the consumer's
    work on the current one (a training step, augmentation) instead of adding to it."""
    return source.iter_torch_batches(
        batch_size=batch_size, collate_fn=_decoding_collate(), device="cpu",
        local_shuffle_buffer_size=local_shuffle_buffer_size,
        local_shuffle_seed=local_shuffle_seed)
