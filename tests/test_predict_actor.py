"""htl_ray.predict.actor: the class each actor of `htl-ray predict` runs, instantiated here in
this process (not as a Ray actor) on batches as Ray Data hands them over. Real image files
written with PIL — RGB, greyscale, RGBA, palette, 16-bit, the training size exactly, corrupt
bytes, a missing file — and rows of an ingested dataset (Parquet), one with its pixels cut
short. Each mask must be the image's own size and match the model's prediction computed
independently; an odd-format image must be segmented as its 8-bit RGB equivalent is; a bad one
must give a row with its reason and no mask, without stopping the others. The constructor
reads the model from Ray's object store, so the session's cluster holds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_files import small_model, small_model_config
from PIL import Image

from htl_ray.data.synth import synth_sample
from htl_ray.inference import ModelBundle, load_rgb, probability_at, segment, to_tensor
from htl_ray.predict.actor import PredictorActor, PredictSpec, write_png
from htl_ray.quality import RISKS, quality_signals


def _bundle(encoder: str = "mobilenet_v2") -> ModelBundle:
    """The small U-Net, on mobilenet_v2 (a fifth of resnet18's weights: quicker to build, copy
    and prune in every actor made here)."""
    model = small_model(seed=6, encoder=encoder)
    with torch.no_grad():                  # logits far from 0: no pixel at p = 0.5 +- rounding
        model.segmentation_head[0].weight.mul_(20)
        model.segmentation_head[0].bias.mul_(20)
    return ModelBundle(state=model.state_dict(), model_config=small_model_config(encoder=encoder),
                       input_size=(32, 32), identity={"mlflow_run_id": "r"})


@pytest.fixture(scope="module")
def bundle():
    return _bundle()


@pytest.fixture
def keep_threads():
    """The actor sets torch's thread count of its process: this one's is restored after."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


def _actor(ray_cluster, bundle, out, **spec) -> PredictorActor:
    out.mkdir(parents=True, exist_ok=True)                 # the runner makes --out
    spec.setdefault("threads", torch.get_num_threads())
    return PredictorActor(PredictSpec(out_dir=str(out), **{"risk": "entropy",
                                                           "review_threshold": 0.2, **spec}),
                          ray_cluster.put(bundle))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """name → path of each odd file, and name → path of its 8-bit RGB equivalent."""
    root = tmp_path_factory.mktemp("actor-images")
    rng = np.random.default_rng(11)
    lesion = [synth_sample(rng, 64)["image"] for _ in range(5)]
    files, twins = {}, {}

    def save(name, im, **kw):
        files[name] = root / name
        im.save(files[name], **kw)

    save("rgb.png", Image.fromarray(lesion[0]).resize((50, 30)))
    save("exact.png", Image.fromarray(lesion[1]).resize((32, 32)))       # no resize at all
    grey = Image.fromarray(lesion[2]).resize((40, 64)).convert("L")
    save("grey.png", grey)
    twins["grey.png"] = grey.convert("RGB")
    rgba = Image.fromarray(lesion[3]).resize((33, 47)).convert("RGBA")
    rgba.putalpha(128)
    save("rgba.png", rgba)
    twins["rgba.png"] = rgba.convert("RGB")
    palette = Image.fromarray(lesion[4]).resize((36, 20)).convert("P")
    save("palette.gif", palette)
    twins["palette.gif"] = palette.convert("RGB")
    deep = (np.asarray(grey, np.float64) * 16).astype(np.uint16)        # peak 4080 of 65535
    save("deep16.png", Image.fromarray(deep))
    twins["deep16.png"] = Image.fromarray(
        (deep / deep.max() * 255).astype(np.uint8), "L").convert("RGB")
    files["broken.jpg"] = root / "broken.jpg"
    files["broken.jpg"].write_bytes(b"GIF? no: these bytes are no image at all")
    files["missing.png"] = root / "missing.png"
    for name, im in twins.items():
        twins[name] = root / f"twin_{name}.png"
        im.save(twins[name])
    return files, twins


def _batch(paths: dict) -> dict[str, np.ndarray]:
    return {"id": np.array([p.split(".")[0] for p in paths], dtype=object),
            "path": np.array([str(v) for v in paths.values()], dtype=object)}


def test_masks_and_probabilities_are_written_at_each_images_own_size(ray_cluster, bundle,
                                                                     images, tmp_path,
                                                                     keep_threads):
    files, _ = images
    actor = _actor(ray_cluster, bundle, tmp_path, probabilities=True)
    batch = _batch(files)
    out = actor(batch)
    model = bundle.build()
    assert out["id"].tolist() == batch["id"].tolist()
    assert out["source"].tolist() == batch["path"].tolist()
    for i, (name, path) in enumerate(files.items()):
        rid = out["id"][i]
        if name in ("broken.jpg", "missing.png"):
            continue
        rgb = load_rgb(path)
        prob = segment(model, [rgb], (32, 32))[0]
        mask = np.asarray(Image.open(tmp_path / f"{rid}_segmentation.png"))
        assert mask.shape == rgb.shape[:2] == (out["height"][i], out["width"][i]), name
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, prob > 0.5), name
        assert out["area_fraction"][i] == pytest.approx((mask > 0).mean())
        stored = np.asarray(Image.open(tmp_path / f"{rid}_probability.png"))
        assert np.abs(stored.astype(int) - np.round(prob * 255)).max() <= 1, name
    assert 0 < out["area_fraction"][:6].mean() < 1      # real masks, neither empty nor full
    # nothing half-written is left behind
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_odd_formats_are_segmented_as_their_8_bit_rgb_equivalents(ray_cluster, bundle, images,
                                                                  tmp_path, keep_threads):
    files, twins = images
    actor = _actor(ray_cluster, bundle, tmp_path)
    odd = {name: files[name] for name in twins}
    same = {f"twin_{name}": twins[name] for name in twins}
    out = actor(_batch({**odd, **same}))
    assert (out["error"] == "").all()
    for name in twins:
        stem = name.split(".")[0]
        a = np.asarray(Image.open(tmp_path / f"{stem}_segmentation.png"))
        b = np.asarray(Image.open(tmp_path / f"twin_{stem}_segmentation.png"))
        assert np.array_equal(a, b), name
    n = len(twins)
    np.testing.assert_allclose(out["entropy"][:n], out["entropy"][n:], atol=1e-6)


def test_a_bad_file_is_a_row_with_its_reason_and_no_mask(ray_cluster, bundle, images, tmp_path,
                                                         keep_threads):
    files, _ = images
    actor = _actor(ray_cluster, bundle, tmp_path)
    batch = _batch({k: files[k] for k in ("broken.jpg", "rgb.png", "missing.png")})
    out = actor(batch)
    broken, good, missing = 0, 1, 2
    assert out["error"][broken].startswith(f"{files['broken.jpg']}: UnidentifiedImageError: ")
    assert out["error"][missing] == f"{files['missing.png']}: file not found"
    assert out["error"][good] == ""
    for i in (broken, missing):
        assert (out["height"][i], out["width"][i]) == (0, 0)
        assert np.isnan(out["risk"][i]) and np.isnan(out["entropy"][i])
        assert not out["review"][i] and out["review_reason"][i] == ""
        assert out["area_fraction"][i] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb_segmentation.png"]
    assert (out["height"][good], out["width"][good]) == (30, 50)


def test_risk_and_review_follow_the_chosen_signal_and_threshold(ray_cluster, bundle, images,
                                                                tmp_path, keep_threads):
    files, _ = images
    good = {k: files[k] for k in ("rgb.png", "exact.png", "grey.png", "rgba.png")}
    batch = _batch(good)
    entropy = _actor(ray_cluster, bundle, tmp_path / "e", risk="entropy",
                     review_threshold=0.0)(batch)
    assert set(entropy) >= {"entropy", "uncertain"} and "tta" not in entropy
    assert np.array_equal(entropy["risk"], entropy["entropy"])
    assert entropy["review"].all()                        # every risk is >= 0
    assert set(entropy["review_reason"]) <= {"risk", "empty mask", "mask covers the whole image"}
    # the entropy computed here, image by image
    model = bundle.build()
    for i, path in enumerate(good.values()):
        x = to_tensor(np.array(Image.fromarray(load_rgb(path)).resize((32, 32),
                                                                      Image.BILINEAR))[None])
        assert quality_signals(model, x, tta=False)["entropy"][0] == pytest.approx(
            entropy["entropy"][i], abs=1e-6)
    tta = _actor(ray_cluster, bundle, tmp_path / "t", risk="tta+uncertain",
                 review_threshold=1.0)(batch)
    assert np.allclose(tta["risk"], (tta["tta"] + tta["uncertain"]) / 2)
    degenerate = (tta["area_fraction"] == 0) | (tta["area_fraction"] == 1)
    assert (tta["review"] == degenerate).all()            # nothing reaches a threshold of 1


def test_the_h_risk_builds_pruned_copies_once_per_actor(ray_cluster, bundle, images, tmp_path,
                                                        keep_threads):
    files, _ = images
    actor = _actor(ray_cluster, bundle, tmp_path, risk="tta+h",
                   review_threshold=RISKS["tta+h"].review_threshold, sparsities=(0.3, 0.6))
    assert sorted(actor.pruned) == [0.3, 0.6]
    from htl_ray.pruning import measured_sparsity

    assert measured_sparsity(actor.model) < 0.01
    assert [round(measured_sparsity(actor.pruned[s]), 2) for s in (0.3, 0.6)] == [0.3, 0.6]
    out = actor(_batch({k: files[k] for k in ("rgb.png", "grey.png")}))
    assert ((out["h"] >= 0) & (out["h"] <= 1)).all()
    assert np.allclose(out["risk"], (out["tta"] + out["h"]) / 2)
    assert _actor(ray_cluster, bundle, tmp_path, risk="tta").pruned == {}


def test_dataset_rows_are_read_from_their_bytes_and_written_at_their_original_size(
        ray_cluster, bundle, tmp_path, keep_threads):
    import pyarrow.parquet as pq

    from htl_ray.data.synth import synthesize

    synthesize(tmp_path / "ds", n=3, size=32, seed=2)
    cols = ["id", "image", "height", "width", "orig_height", "orig_width"]
    rows = pq.read_table(tmp_path / "ds" / "records.parquet", columns=cols).to_pydict()
    batch = {k: np.asarray(v, dtype=object if k in ("id", "image") else np.int64)
             for k, v in rows.items()}
    batch["orig_height"][1], batch["orig_width"][1] = 45, 60       # stored smaller
    batch["image"][2] = batch["image"][2][:100]                    # cut short
    out_dir = tmp_path / "out"
    out = _actor(ray_cluster, bundle, out_dir)(batch)
    ids = rows["id"]
    assert out["source"].tolist() == ids
    assert out["error"][2].startswith(f"{ids[2]}: ValueError: ")
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{i}_segmentation.png"
                                                         for i in ids[:2]]
    model = bundle.build()
    for i in (0, 1):
        image = np.frombuffer(batch["image"][i], np.uint8).reshape(32, 32, 3)
        with torch.inference_mode():
            prob = torch.sigmoid(model(to_tensor(image[None].copy())))[0, 0].numpy()
        h, w = int(batch["orig_height"][i]), int(batch["orig_width"][i])
        mask = np.asarray(Image.open(out_dir / f"{ids[i]}_segmentation.png"))
        assert mask.shape == (h, w) == (out["height"][i], out["width"][i])
        assert np.array_equal(mask > 0, probability_at(prob, h, w) > 0.5)


def test_threads_default_to_the_actors_cpus(ray_cluster, bundle, tmp_path, keep_threads):
    _actor(ray_cluster, bundle, tmp_path, threads=0, cpus_per_actor=1.0)
    assert torch.get_num_threads() == 1
    _actor(ray_cluster, bundle, tmp_path, threads=3)
    assert torch.get_num_threads() == 3


def test_write_png_replaces_a_file_whole(tmp_path):
    target = tmp_path / "m.png"
    target.write_bytes(b"an older, broken mask")
    write_png(np.full((5, 7), 255, np.uint8), target)
    assert np.asarray(Image.open(target)).tolist() == [[255] * 7] * 5
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
