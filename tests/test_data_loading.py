import numpy as np
import torch

from htl_ray.data.loading import decode_batch, iter_decoded, split_dataset
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


def test_split_dataset_reads_exactly_one_split(ray_cluster, synth_dataset):
    ds = split_dataset(synth_dataset, "val")
    expected = read_table(synth_dataset, columns=["id", "split"], split="val")
    assert sorted(ds.to_pandas()["id"]) == sorted(expected["id"])
    assert split_dataset(synth_dataset, "train", limit=10).count() == 10


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
