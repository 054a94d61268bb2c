import numpy as np
import pytest
import torch

from htl_ray.data.loading import (
    DRIVER_READ_MAX_BYTES,
    TRAIN_COLUMNS,
    decode_batch,
    iter_decoded,
    split_dataset,
)
from htl_ray.data.schema import read_table


def test_decode_batch_restores_pixels():
    img = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    mask = (img[..., 0] % 2).astype(np.uint8)
    batch = {"image": np.array([i.tobytes() for i in img], dtype=object),
             "mask": np.array([m.tobytes() for m in mask], dtype=object),
             "height": np.array([4, 4]), "width": np.array([5, 5])}
    x, y = decode_batch(batch)
    assert x.shape == (2, 3, 4, 5) and y.shape == (2, 1, 4, 5)
    assert torch.equal((x * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(img))
    assert torch.equal(y[:, 0].byte(), torch.from_numpy(mask))


@pytest.mark.parametrize("driver_read_max_bytes", [DRIVER_READ_MAX_BYTES, 0],
                         ids=["driver-read", "ray-data-read"])
def test_split_dataset_reads_exactly_one_split_in_file_order(ray_cluster, synth_dataset,
                                                             driver_read_max_bytes):
    """Both read paths hand the trainer the same rows in the same (file) order and blocks, so a
    seeded run does not depend on the size of its records file."""
    kw = {"driver_read_max_bytes": driver_read_max_bytes}
    ds = split_dataset(synth_dataset, "val", **kw)
    expected = read_table(synth_dataset, columns=["id", "split"], split="val")
    assert list(ds.to_pandas()["id"]) == list(expected["id"])
    assert ds.num_blocks() == 1 and ds.columns() == TRAIN_COLUMNS
    first = split_dataset(synth_dataset, "train", limit=10, **kw).to_pandas()
    train = read_table(synth_dataset, columns=["id", "image"], split="train")
    assert list(first["id"]) == list(train["id"][:10])
    assert list(first["image"]) == list(train["image"][:10])


def test_decoding_in_ray_datas_thread_yields_the_same_batches_in_the_same_order(
        ray_cluster, synth_dataset):
    """The trainer's path (iter_decoded) must not change what a seeded run trains on."""
    ds = split_dataset(synth_dataset, "train")
    kwargs = {"batch_size": 8, "local_shuffle_buffer_size": 32, "local_shuffle_seed": 3}
    plain = [(batch["id"], *decode_batch(batch))
             for batch in ds.iter_batches(batch_format="numpy", **kwargs)]
    decoded = list(iter_decoded(ds, **kwargs))
    assert len(decoded) == len(plain) > 2
    ids = np.concatenate([b["id"] for _, _, b in decoded])
    assert sorted(ids) == sorted(read_table(synth_dataset, columns=["id"], split="train")["id"])
    assert list(ids) != sorted(ids)                               # shuffled, not read order
    for (x, y, batch), (ids_p, x_p, y_p) in zip(decoded, plain, strict=True):
        assert list(batch["id"]) == list(ids_p)
        assert x.dtype == torch.float32 and torch.equal(x, x_p) and torch.equal(y, y_p)
