import numpy as np
import torch

from htl_ray.data.loading import TRAIN_COLUMNS, decode_batch, iter_decoded, split_dataset
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


def test_decode_batch_on_a_device_gives_the_same_values_there():
    """The scorer decodes on its device (uint8 across the bus, converted there)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 6, 7, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (3, 6, 7), dtype=np.uint8)
    batch = {"image": np.array([i.tobytes() for i in img], dtype=object),
             "mask": np.array([m.tobytes() for m in mask], dtype=object),
             "height": np.array([6] * 3), "width": np.array([7] * 3)}
    x, y = decode_batch(batch)
    x_dev, y_dev = decode_batch(batch, torch.device("cpu"))
    assert torch.equal(x, x_dev) and torch.equal(y, y_dev) and x_dev.dtype == torch.float32
    # a device that refuses host operands (as CUDA does): the result lives there, same shape
    x_meta, y_meta = decode_batch(batch, "meta")
    assert x_meta.device.type == "meta" and x_meta.shape == x.shape and x_meta.dtype == x.dtype
    assert y_meta.device.type == "meta" and y_meta.shape == y.shape


def test_both_read_paths_give_the_same_split_rows_order_schema_and_single_block(
        ray_cluster, synth_dataset, monkeypatch):
    """A seeded run must not depend on which reader a records file gets. The driver path is
    proved to be the one taken (Ray Data's reader is made to fail), the other is forced with a
    zero threshold; the expected rows come from the whole file, masked in pandas."""
    import pandas as pd
    import ray.data

    from htl_ray.data.loading import uncompressed_bytes
    from htl_ray.train.evaluation import VAL_META_COLUMNS

    cols = TRAIN_COLUMNS + VAL_META_COLUMNS
    whole = pd.read_parquet(synth_dataset / "records.parquet")
    assert 0 < uncompressed_bytes(synth_dataset / "records.parquet") \
        <= ray.data.DataContext.get_current().target_max_block_size
    by_ray = {split: split_dataset(synth_dataset, split, columns=cols, driver_read_max_bytes=0)
              for split in ("train", "val")}
    by_ray["first10"] = split_dataset(synth_dataset, "train", limit=10, driver_read_max_bytes=0)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver path must not start Ray Data's reader")

    monkeypatch.setattr(ray.data, "read_parquet", refuse)
    by_driver = {split: split_dataset(synth_dataset, split, columns=cols)
                 for split in ("train", "val")}
    by_driver["first10"] = split_dataset(synth_dataset, "train", limit=10)
    for name, ds in by_driver.items():
        other = by_ray[name]
        assert ds.num_blocks() == other.num_blocks() == 1, name
        assert ds.schema() == other.schema(), name
        got = ds.to_pandas()
        pd.testing.assert_frame_equal(got, other.to_pandas())
        split = "train" if name == "first10" else name
        expected = whole[whole["split"] == split].reset_index(drop=True)
        expected = expected[list(got.columns)].head(10 if name == "first10" else None)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)   # pandas vs Arrow strings
    assert len(by_driver["val"].to_pandas()) == (whole["split"] == "val").sum() > 0


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
