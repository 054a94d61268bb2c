"""`htl-ray predict`, external validation and the MLflow Model, on a small real training run.

One module-scoped run (real Ray, real MLflow in SQLite) trains on images with ISIC ids whose
originals are of several sizes, none of them the training size and most not square, so every
resize of the prediction path is exercised; the ISIC challenge's own scorer then checks the
masks `predict` writes against the metrics `evaluate` computes at original resolution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from htl_ray.cli import main
from htl_ray.data.synth import synth_sample
from htl_ray.quality import REVIEW_THRESHOLD, RISKS

SIZES = [(72, 50), (40, 90), (64, 64), (33, 47), (100, 60)]       # (width, height) originals
SMALL = "[16,8,8,4,4]"


def _write_site(root: Path, n: int, seed: int, first_id: int) -> Path:
    """A folder layout (images/ + masks/<id>_segmentation.png) of synthetic lesions resized to
    SIZES, ISIC-style ids."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i, s in enumerate(synth_sample(rng, 64) for _ in range(n)):
        rid = f"ISIC_{first_id + i:07d}"
        w, h = SIZES[i % len(SIZES)]
        Image.fromarray(s["image"]).resize((w, h), Image.BILINEAR).save(
            root / "images" / f"{rid}.{'jpg' if i % 2 else 'png'}", quality=95)
        Image.fromarray(s["mask"] * 255).resize((w, h), Image.NEAREST).save(
            root / "masks" / f"{rid}_segmentation.png")
    return root


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory, _mlflow_store_template):
    import shutil

    from htl_ray.config import load_config
    from htl_ray.data.ingest import ingest
    from htl_ray.data.layouts import FolderLayout
    from htl_ray.train.trainer import run_training

    root = tmp_path_factory.mktemp("predict")
    site = _write_site(root / "site", 40, seed=1, first_id=1)
    ingest(FolderLayout("{id}_segmentation.png"), site, root / "ds", size=32,
           fractions=(0.6, 0.2, 0.2))
    shutil.copyfile(_mlflow_store_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(None, [f"data.path={root / 'ds'}", f"tracking.uri={uri}",
                             f"run.storage_path={root / 'runs'}", "run.name=small",
                             "scaling.num_workers=1", "train.epochs=1", "train.lr=0.01",
                             "data.batch_size=8", f"model.decoder_channels={SMALL}"])
    outcome = run_training(cfg)
    return {"root": root, "site": site, "uri": uri, "outcome": outcome, "data": root / "ds"}


def test_predict_a_mixed_folder_writes_masks_at_original_size_and_reports_bad_files(
        trained, tmp_path, capsys):
    """Formats png/jpg/bmp/tif, non-square sizes, nested folders, a corrupt file, a text file
    and a symbolic-link loop: one mask per readable image at its own size, the corrupt file
    named with its reason, exit 0; a second run writes nothing new."""
    src = tmp_path / "incoming"
    (src / "clinic_b" / "day2").mkdir(parents=True)
    rng = np.random.default_rng(7)
    sample = [synth_sample(rng, 64) for _ in range(4)]
    Image.fromarray(sample[0]["image"]).resize((120, 70)).save(src / "a.png")
    Image.fromarray(sample[1]["image"]).resize((50, 90)).convert("L").save(
        src / "clinic_b" / "b.bmp")
    Image.fromarray(sample[2]["image"]).resize((64, 64)).save(src / "clinic_b" / "day2" / "c.tif")
    Image.fromarray(sample[3]["image"]).resize((31, 77)).save(src / "clinic_b" / "d.jpeg")
    (src / "clinic_b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    (src / "clinic_b" / "loop").symlink_to(src)
    out = tmp_path / "pred"
    run_dir = str(trained["outcome"].run_dir)
    assert main(["predict", run_dir, str(src), "--out", str(out), "--probabilities"]) == 0
    printed = capsys.readouterr().out
    expected = {"a": (70, 120), "b": (90, 50), "c": (64, 64), "d": (77, 31)}
    for rid, (h, w) in expected.items():
        mask = np.asarray(Image.open(out / f"{rid}_segmentation.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"{rid}_probability.png")).shape == (h, w)
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == sorted(expected)
    assert table.set_index("id").loc["b", ["height", "width"]].tolist() == [90, 50]
    assert ((table["risk"] >= 0) & (table["risk"] <= 1)).all()
    degenerate = table["area_fraction"].isin([0.0, 1.0])
    assert (table["review"] == ((table["risk"] >= REVIEW_THRESHOLD) | degenerate)).all()
    assert (table["mlflow_run_id"] == trained["outcome"].mlflow_run_id).all()
    assert (table["area_fraction"].between(0, 1)).all()
    assert pd.read_csv(out / "predictions.csv")["id"].tolist() == table["id"].tolist()
    report = json.loads((out / "report.json").read_text())
    assert [u["file"] for u in report["unreadable"]] == [str(src / "clinic_b" / "broken.jpg")]
    assert "UnidentifiedImageError" in report["unreadable"][0]["reason"]
    reasons = {Path(p["file"]).name: p["reason"] for p in report["passed_over"]}
    assert "not an image" in reasons["notes.txt"] and "loop" in reasons["loop"]
    assert "1 unreadable" in printed

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["predict", run_dir, str(src), "--out", str(out), "--probabilities"]) == 0
    assert "0 predicted now, 4 already there, 1 unreadable" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k.endswith(".png")} == \
        {k: v for k, v in before.items() if k.endswith(".png")}
    # an image deleted since: out of the table, named in the report, its mask kept
    (src / "clinic_b" / "d.jpeg").unlink()
    assert main(["predict", run_dir, str(src), "--out", str(out), "--probabilities"]) == 0
    assert "1 image(s) predicted earlier are no longer in INPUT" in capsys.readouterr().out
    assert sorted(pd.read_parquet(out / "predictions.parquet")["id"]) == ["a", "b", "c"]
    stale = json.loads((out / "report.json").read_text())["not_in_input_any_more"]
    assert [x["id"] for x in stale] == ["d"] and (out / "d_segmentation.png").is_file()


def test_predict_refuses_bad_input_with_one_error_line(trained, tmp_path, capsys):
    run_dir = str(trained["outcome"].run_dir)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "x.png")
    (tmp_path / "a_file").write_text("")
    bad_ckpt = tmp_path / "ckpt"
    bad_ckpt.mkdir()
    (bad_ckpt / "checkpoint.pt").write_bytes(b"truncated")
    (bad_ckpt / "meta.json").write_text(json.dumps({"epoch": 0, "model_config": {}}))
    cases = [
        ([str(tmp_path / "nope"), str(tmp_path / "imgs")], "MODEL:"),
        ([str(bad_ckpt), str(tmp_path / "imgs")], "not a loadable checkpoint"),
        ([run_dir, str(tmp_path / "missing")], "INPUT:"),
        ([run_dir, str(trained["data"])], "--split"),
        ([run_dir, str(tmp_path / "imgs"), "--out", str(tmp_path / "a_file")], "is a file"),
        (["models:/no-such-model/1", str(tmp_path / "imgs"), "--tracking-uri",
          trained["uri"]], "MODEL: models:/no-such-model/1 not found"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        assert main(["predict", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_mlflow_model_loads_in_a_fresh_process_and_matches_predict(trained, tmp_path):
    """runs:/<id>/model in a subprocess returns the masks `predict` wrote, at input size; the
    run is registered by name and `predict models:/name/1` uses it."""
    run_id, uri = trained["outcome"].mlflow_run_id, trained["uri"]
    image = np.asarray(Image.open(next((trained["site"] / "images").glob("*.png"))).convert("RGB"))
    np.save(tmp_path / "image.npy", image[None])
    # htl-ray's own install hidden: the model must bring the code it needs (code_paths)
    code = ("import sys, importlib.util\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
            "assert importlib.util.find_spec('htl_ray') is None\n"
            "import numpy as np, mlflow\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            f"m = mlflow.pyfunc.load_model('runs:/{run_id}/model')\n"
            "np.save('mask.npy', m.predict(np.load('image.npy')))\n"
            "import htl_ray; print(htl_ray.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/work/main" not in proc.stdout and "code" in proc.stdout   # the model's own copy
    from_mlflow = np.load(tmp_path / "mask.npy")
    assert from_mlflow.shape == (1, *image.shape[:2]) and from_mlflow.dtype == np.uint8

    src = tmp_path / "one"
    src.mkdir()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    Image.fromarray(image).save(src / "img.png")
    assert main(["register", str(trained["outcome"].run_dir), "lesions"]) == 0
    assert main(["register", str(trained["outcome"].run_dir), "lesions"]) == 0   # no 2nd version
    assert main(["predict", "models:/lesions/1", str(src), "--out", str(tmp_path / "p"),
                 "--tracking-uri", uri, "--risk", "tta+h"]) == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before   # no global MLflow state
    written = np.asarray(Image.open(tmp_path / "p" / "img_segmentation.png"))
    assert np.array_equal(written, from_mlflow[0])
    row = pd.read_parquet(tmp_path / "p" / "predictions.parquet").iloc[0]
    assert 0 <= row["h"] <= 1 and row["risk"] == pytest.approx((row["h"] + row["tta"]) / 2)
    threshold = RISKS["tta+h"].review_threshold                   # the risk's own threshold
    assert row["review"] == (row["risk"] >= threshold or row["area_fraction"] in (0.0, 1.0))


def test_external_validation_and_the_isic_scorer_agree(trained, tmp_path, capsys):
    """A test-only dataset from another 'site': `evaluate --data` logs external/<site>/... at
    training and original resolution into the run; `paired` and `compare` read them; the masks
    `predict` writes score the same with the ISIC challenge's own scorer to 1e-9."""
    from isic_challenge_scoring import SegmentationScore
    from mlflow.tracking import MlflowClient

    site_b = _write_site(tmp_path / "site_b", 10, seed=5, first_id=100)
    assert main(["data", "ingest", "--layout", "folder", str(site_b), "--out",
                 str(tmp_path / "b32"), "--size", "32", "--mask-pattern", "{id}_segmentation.png",
                 "--all-test"]) == 0
    capsys.readouterr()
    run_dir = str(trained["outcome"].run_dir)
    assert main(["evaluate", run_dir, "--data", str(tmp_path / "b32"), "--name", "clinic-b"]) == 0
    assert "external/clinic-b (10 images)" in capsys.readouterr().out
    metrics = MlflowClient(trained["uri"]).get_run(trained["outcome"].mlflow_run_id).data.metrics
    for key in ("external/clinic-b/dice", "external/clinic-b/original/thresholded_jaccard"):
        assert 0 <= metrics[key] <= 1, key
    assert main(["paired", run_dir, run_dir, "--split", "external/clinic-b", "--boot", "50"]) == 0
    assert "| dice " in capsys.readouterr().out
    assert main(["compare", "htl-ray", "--tracking-uri", trained["uri"], "--split",
                 "external/clinic-b", "--out", str(tmp_path / "cmp")]) == 0
    assert f"{metrics['external/clinic-b/dice']:.4f}" in capsys.readouterr().out

    assert main(["predict", run_dir, str(tmp_path / "b32"), "--split", "test", "--out",
                 str(tmp_path / "masks")]) == 0
    areas = pd.read_parquet(tmp_path / "masks" / "predictions.parquet")["area_fraction"]
    assert ((areas > 0) & (areas < 1)).mean() >= 0.5     # real masks: the resizing is exercised
    truth = tmp_path / "truth"
    truth.mkdir()
    for f in (site_b / "masks").iterdir():
        (truth / f.name).symlink_to(f)
    official = SegmentationScore.from_dir(truth, _masks_only(tmp_path / "masks"))
    ours = metrics
    assert official.macro_average["threshold_jaccard"] == pytest.approx(
        ours["external/clinic-b/original/thresholded_jaccard"], abs=1e-9)
    assert official.macro_average["jaccard"] == pytest.approx(
        ours["external/clinic-b/original/iou"], abs=1e-9)
    assert official.macro_average["dice"] == pytest.approx(
        ours["external/clinic-b/original/dice"], abs=1e-9)


def _masks_only(folder: Path) -> Path:
    """The scorer reads every file of the prediction folder it matches: give it the masks."""
    only = folder.parent / "masks_only"
    only.mkdir(exist_ok=True)
    for f in folder.glob("*_segmentation.png"):
        (only / f.name).symlink_to(f)
    return only


def test_evaluate_register_and_resource_mistakes_are_one_error_line(trained, tmp_path, capsys):
    """Each mistake: exit 2, one `error:` line naming the flag; nothing waits for resources
    that will not come."""
    from htl_ray.data.ingest import ingest
    from htl_ray.data.layouts import FolderLayout
    from htl_ray.data.synth import synthesize

    run_dir = str(trained["outcome"].run_dir)
    synthesize(tmp_path / "s48", n=20, size=48, seed=0, fractions=(0, 0, 1))
    # the run's own images again, test-only: not another site
    ingest(FolderLayout("{id}_segmentation.png"), trained["site"], tmp_path / "again",
           size=32, fractions=(0, 0, 1))
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "x.png")
    cases = [
        (["evaluate", run_dir, "--data", str(tmp_path / "s48")], "stored at 48x48"),
        (["evaluate", run_dir, "--data", str(tmp_path / "imgs")], "--data:"),
        (["evaluate", run_dir, "--data", str(tmp_path / "again")],
         f"test images are also in the train or val split of {trained['data']} (run small)"),
        (["evaluate", run_dir, "--data", str(trained["data"]), "--split", "train",
          "--name", "bad name"], "--name 'bad name'"),
        (["evaluate", run_dir, "--name", "x"], "--name names the site of --data"),
        (["register", run_dir, "m", "--tracking-uri", "http://127.0.0.1:9"], "not reachable"),
        (["register", run_dir, "m", "--tracking-uri", f"sqlite:///{tmp_path / 'moved.db'}"],
         "--tracking-uri: no MLflow store at"),
        (["register", run_dir, "m", "--tracking-uri", _empty_store(tmp_path)], "is not in"),
        (["predict", run_dir, str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
          "--actors", "3", "--cpus-per-actor", "1"], "--actors 3 x 1 CPU each"),
        (["predict", run_dir, str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
          "--gpus-per-actor", "1"], "no GPU here"),
        (["predict", run_dir, str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
          "--review-threshold", "7"], "a risk is in [0, 1]"),
        (["compare", "htl-ray", "--tracking-uri", trained["uri"], "--split", "external/nosuch",
          "--out", str(tmp_path / "cmp")], "no run has metrics of that split"),
    ]
    capsys.readouterr()                               # MLflow's notes on creating a store
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()        # a failed start leaves no (empty) folder


def _empty_store(tmp_path: Path) -> str:
    """A real MLflow store that does not hold the run (the run's store was replaced)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def test_image_ids_stay_unique_and_an_interrupted_table_keeps_every_finished_row(tmp_path):
    from htl_ray.predict.inputs import Inputs, unique_ids
    from htl_ray.predict.runner import (
        PARTIAL_FILE,
        check_same_settings,
        done_ids,
        read_rows,
        write_settings,
    )

    names = ["x.jpg", "x.png", "a/y.png", "b/y.png", "a__y.png", "z.png"]
    ids, clashes = unique_ids([Path(n) for n in names])
    assert len(set(ids)) == len(ids) and ids[-1] == "z" and clashes == ["x", "y"]
    assert ids[:2] == ["x_jpg", "x_png"] and ids[3] == "b__y"

    out = tmp_path / "out"
    out.mkdir()
    files = []
    for name in ("a", "b", "c"):
        f = tmp_path / f"{name}.png"
        Image.new("RGB", (4, 4)).save(f)
        files.append(f)
        (out / f"{name}_segmentation.png").write_bytes(b"png")
    from htl_ray.predict.runner import _stat

    rows = [{"id": f.stem, "source": str(f), "source_stat": _stat(f)} for f in files]
    # "b" was cut short by an interruption; a later run appended "c" after a newline
    text = json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:15] + "\n" + json.dumps(rows[2])
    (out / PARTIAL_FILE).write_text(text + "\n")
    table = read_rows(out)
    assert sorted(table["id"]) == ["a", "c"]
    inputs = Inputs(rows=[{"id": f.stem, "path": str(f)} for f in files], kind="folder")
    assert done_ids(out, table, inputs, probabilities=False) == {"a", "c"}
    Image.new("RGB", (5, 5)).save(files[2])           # changed since: predicted again
    assert done_ids(out, table, inputs, probabilities=False) == {"a"}
    other = Inputs(rows=[{"id": "a", "path": str(tmp_path / "elsewhere" / "a.png")}],
                   kind="folder")                     # another folder's "a": not done
    assert done_ids(out, table, other, probabilities=False) == set()

    write_settings(out, {"risk": "tta", "identity": {"mlflow_run_id": "r1"}})
    check_same_settings(out, {"risk": "tta", "identity": {"mlflow_run_id": "r1"}})
    with pytest.raises(Exception, match="another identity"):
        check_same_settings(out, {"risk": "tta", "identity": {"mlflow_run_id": "r2"}})
