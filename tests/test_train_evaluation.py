"""htl_ray.train.evaluation: per-image metrics at training and at original resolution, and a
checkpoint's held-out evaluation. The pure parts on hand-made masks whose Dice/IoU are worked
out by hand (a bilinear upsampling of a step edge, a non-square original, a mask stored at its
original size); the split means, group and worst-group keys on a hand-made table; then
`evaluate` and `evaluate_checkpoint` on real ingested datasets (non-square originals, Parquet)
with a real small U-Net, checked against an independent per-image computation. Those two take
a Ray Dataset, so they use the session's Ray cluster; nothing else does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from htl_ray.data.schema import encode_mask_png
from htl_ray.errors import UserError
from htl_ray.metrics import METRIC_NAMES
from htl_ray.train.evaluation import (
    ORIGINAL_COLUMNS,
    evaluate,
    evaluate_checkpoint,
    original_metrics,
    per_sample_file,
    split_metrics,
)


def test_per_sample_file_names_a_split_or_an_external_site():
    assert per_sample_file("val") == "val_per_sample.parquet"
    assert per_sample_file("test") == "test_per_sample.parquet"
    assert per_sample_file("external/clinic-b") == "external_clinic-b_per_sample.parquet"


def test_original_metrics_upsample_the_probabilities_before_thresholding():
    # a step edge at training size 4x4: columns 0-1 lesion. Bilinear to 6x8 (h x w) gives
    # 1, 1, 1, 0.75 | 0.25, 0, 0, 0 across: the lesion is columns 0-3 at the original size.
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0, :, :2] = 1.0
    probs[1, :, :1] = 0.9                       # image 1: column 0, stored at original size
    probs[1, :, 1:] = 0.1
    truth0 = np.zeros((6, 8), bool)
    truth0[:, :4] = True
    mask1 = np.zeros((4, 4), np.uint8)
    mask1[:, :2] = 1
    batch = {"orig_height": np.array([6, 4]), "orig_width": np.array([8, 4]),
             "orig_mask": np.array([encode_mask_png(truth0), None], dtype=object),
             "mask": np.array([b"", mask1.tobytes()], dtype=object),
             "height": np.array([4, 4]), "width": np.array([4, 4])}
    rows = original_metrics(probs, batch)
    assert rows[0] == {f"{k}_original": 1.0 for k in METRIC_NAMES}
    # image 1: 4 predicted pixels, 8 true, 4 shared
    assert rows[1] == pytest.approx({"dice_original": 8 / 12, "iou_original": 0.5,
                                     "thresholded_jaccard_original": 0.0,   # IoU < 0.65
                                     "sensitivity_original": 0.5,
                                     "specificity_original": 1.0})


def _table(**extra) -> pd.DataFrame:
    dice = [0.2, 0.4, 0.6, 0.8]
    return pd.DataFrame({"id": list("abcd"), "dice": dice, "iou": [d / 2 for d in dice],
                         "thresholded_jaccard": [0.0, 0.0, 0.0, 0.7],
                         "sensitivity": [1.0] * 4, "specificity": [0.5] * 4,
                         "site": ["head/neck", "head/neck", "back", None], **extra})


def test_split_metrics_are_means_groups_and_the_worst_known_group():
    m = split_metrics(_table(), "val")
    assert m["val/dice"] == pytest.approx(0.5) and m["val/iou"] == pytest.approx(0.25)
    assert m["val/thresholded_jaccard"] == pytest.approx(0.175)
    assert m["val/group/site/head-neck/dice"] == pytest.approx(0.3)
    assert m["val/group/site/back/dice"] == pytest.approx(0.6)
    assert m["val/group/site/unknown/dice"] == pytest.approx(0.8)
    assert m["val/worst_group/site/dice"] == pytest.approx(0.3)     # 'unknown' is no group
    assert not any("/original/" in k for k in m)
    with_original = split_metrics(_table(**{f"{k}_original": [0.1, 0.1, 0.1, 0.5]
                                            for k in METRIC_NAMES}), "external/b")
    assert with_original["external/b/original/dice"] == pytest.approx(0.2)
    assert with_original["external/b/dice"] == pytest.approx(0.5)


# ------------------------------------------------------------------ with a Ray Dataset

SIZES = [(50, 30), (40, 64), (33, 47), (64, 64)]          # (width, height) of the originals


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An ingested dataset of 12 synthetic lesions at non-square original sizes (32 px
    stored), and a checkpoint of the small U-Net."""
    import torch
    from model_files import small_model, write_checkpoint

    from htl_ray.data.ingest import ingest
    from htl_ray.data.layouts import FolderLayout
    from htl_ray.data.synth import synth_sample

    root = tmp_path_factory.mktemp("evaluation")
    site = root / "site"
    (site / "images").mkdir(parents=True)
    (site / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        s = synth_sample(rng, 64)
        w, h = SIZES[i % len(SIZES)]
        Image.fromarray(s["image"]).resize((w, h), Image.BILINEAR).save(
            site / "images" / f"L{i:02d}.png")
        Image.fromarray(s["mask"] * 255).resize((w, h), Image.NEAREST).save(
            site / "masks" / f"L{i:02d}.png")
    ingest(FolderLayout(), site, root / "ds", size=32, fractions=(0.5, 0.0, 0.5))
    model = small_model(seed=4)
    with torch.no_grad():                  # logits far from 0: no pixel at p = 0.5 +- rounding
        model.segmentation_head[0].weight.mul_(20)
        model.segmentation_head[0].bias.mul_(20)
    ckpt = write_checkpoint(root / "checkpoint_0", model, epoch=0)
    return {"root": root, "site": site, "ds": root / "ds", "ckpt": ckpt, "model": model}


def _cfg(dataset):
    from htl_ray.config import load_config

    return load_config(None, [f"data.path={dataset}", "model.decoder_channels=[16,8,8,4,4]",
                              "data.val_batch_size=4"])


def _expected(dataset, site, ckpt, split: str) -> pd.DataFrame:
    """Per image, computed here: the stored 32x32 image through the model, the probability
    resized to the original file's size, against the original mask file."""
    import torch
    from model_files import small_model

    from htl_ray.checkpoints import load_checkpoint
    from htl_ray.data.schema import decode_image, decode_mask, read_table
    from htl_ray.inference import probability_at, to_tensor
    from htl_ray.metrics import per_image_metrics

    model = small_model()
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    rows = []
    table = read_table(dataset, ["id", "image", "mask", "height", "width"], split)
    for r in table.to_dict(orient="records"):
        image = decode_image(r["image"], r["height"], r["width"])
        with torch.inference_mode():
            prob = torch.sigmoid(model(to_tensor(image[None].copy())))[0, 0].numpy()
        truth = np.asarray(Image.open(site / "masks" / f"{r['id']}.png")) > 127
        at_original = probability_at(prob, *truth.shape) > 0.5
        stored = per_image_metrics((prob > 0.5)[None], decode_mask(
            r["mask"], r["height"], r["width"])[None] > 0)
        full = per_image_metrics(at_original[None], truth[None])
        rows.append({"id": r["id"], **{k: float(stored[k][0]) for k in METRIC_NAMES},
                     **{f"{k}_original": float(full[k][0]) for k in METRIC_NAMES}})
    return pd.DataFrame(rows)


def test_evaluate_checkpoint_scores_the_test_split_at_both_resolutions(ray_cluster, data):
    metrics, table = evaluate_checkpoint(data["ckpt"], _cfg(data["ds"]))
    expected = _expected(data["ds"], data["site"], data["ckpt"], "test")
    assert table["id"].tolist() == expected["id"].tolist() and len(table) == 6
    cols = [*METRIC_NAMES, *[f"{k}_original" for k in METRIC_NAMES]]
    np.testing.assert_allclose(table[cols].to_numpy(float), expected[cols].to_numpy(float),
                               atol=1e-6)
    assert (table["dice_original"] > 0).all() and (table["dice_original"] < 1).all()
    assert not np.allclose(table["dice"], table["dice_original"])    # the resizing matters
    assert {"age", "sex", "site", "diagnosis", "area_fraction", "contrast"} <= set(table)
    written = pd.read_parquet(data["ckpt"] / "test_per_sample.parquet")
    pd.testing.assert_frame_equal(written, table)
    assert metrics["test/dice"] == pytest.approx(table["dice"].mean())
    assert metrics["test/original/iou"] == pytest.approx(table["iou_original"].mean())
    assert "test/worst_group/size_quartile/dice" in metrics


def test_evaluate_checkpoint_on_another_dataset_names_its_site(ray_cluster, data):
    metrics, table = evaluate_checkpoint(data["ckpt"], _cfg(data["root"] / "unused"), "train",
                                         data=data["ds"], name="clinic-b")
    assert len(table) == 6
    assert set(metrics) >= {"external/clinic-b/dice", "external/clinic-b/original/dice"}
    assert not any(k.startswith("train/") for k in metrics)
    assert (data["ckpt"] / "external_clinic-b_per_sample.parquet").is_file()


def test_an_empty_split_names_the_key_that_chose_the_dataset(ray_cluster, data):
    with pytest.raises(UserError, match=f"^data.path: {data['ds']} has no rows in the 'val' "
                                        "split$"):
        evaluate_checkpoint(data["ckpt"], _cfg(data["ds"]), "val")
    with pytest.raises(UserError, match=f"^--data: {data['ds']} has no rows in the 'val' "
                                        "split$"):
        evaluate_checkpoint(data["ckpt"], _cfg(data["ds"]), "val", data=data["ds"], name="x")


def test_ranks_share_the_rows_and_together_score_each_once(ray_cluster, data):
    from htl_ray.data.loading import TRAIN_COLUMNS, split_dataset

    model = data["model"]
    ds = split_dataset(data["ds"], "train", columns=TRAIN_COLUMNS + list(ORIGINAL_COLUMNS))
    whole = evaluate(model, ds, batch_size=4, rank=0, world=1, original=True)
    parts = [evaluate(model, ds, batch_size=4, rank=r, world=2) for r in (0, 1)]
    assert parts[0]["id"].tolist() == whole["id"].tolist()[0::2]       # row index mod world
    assert parts[1]["id"].tolist() == whole["id"].tolist()[1::2]
    joined = pd.concat(parts).set_index("id").loc[whole["id"]]
    np.testing.assert_allclose(joined["dice"].to_numpy(), whole["dice"].to_numpy(), atol=1e-6)
    assert "dice_original" in whole and "dice_original" not in parts[0]
    assert evaluate(model, ds, batch_size=4, rank=5, world=6)["id"].tolist() == [
        whole["id"].iloc[5]]
