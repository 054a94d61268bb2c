"""Ingestion: the real ISIC folder's known quirks, and a bad-input matrix built here."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from htl_ray.cli import main
from htl_ray.data.ingest import IngestError, ingest
from htl_ray.data.layouts import FolderLayout, IsicLayout, LayoutError, Ph2Layout
from htl_ray.data.schema import decode_mask, read_table


def _lesion_image(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 60 + 150).astype(np.uint8)
    arr[8:20, 10:25] = 60
    Image.fromarray(arr).save(path)


def _mask(path: Path, w: int = 40, h: int = 30, values=(0, 255)) -> None:
    arr = np.full((h, w), values[0], np.uint8)
    arr[8:20, 10:25] = values[1]
    Image.fromarray(arr).save(path)


# --------------------------------------------------------------------- real ISIC data


def test_real_isic_folder_reports_exactly_its_known_quirks(isic_dir, tmp_path):
    result = ingest(IsicLayout(), isic_dir, tmp_path / "isic", size=32)
    report = json.loads((tmp_path / "isic" / "report.json").read_text())
    assert report["total_images"] == 2005 and report["usable"] == 2005
    assert report["quarantined"] == 0
    # the one image without a metadata row, and nothing else is wrong
    assert report["counts"] == {"no_metadata": 1}
    assert [x["id"] for x in report["issues"]["no_metadata"]] == ["ISIC_0015982"]
    ms = report["metadata_summary"]
    assert ms["ids_normalised"] == 1391                   # '<id>_downsampled' rows
    # blank fields (+1 for the image with no row at all)
    assert ms["missing"] == {"age": 222, "sex": 187, "site": 507, "diagnosis": 1,
                             "lesion_id": 1460}
    assert ms["lesions_with_several_images"] == 10 and ms["images_of_repeated_lesions"] == 23
    df = read_table(tmp_path / "isic")
    assert (df.orig_width == 256).all() and (df.height == 32).all()
    for _, group in df[df.lesion_id.notna()].groupby("lesion_id"):
        assert group.split.nunique() == 1                 # a lesion never crosses splits
    assert set(df.diagnosis.dropna()) == {"NV", "MEL", "BKL"}
    assert result["manifest"]["split_counts"] == {"train": 1404, "val": 301, "test": 300}
    # every other file is listed with why it was not used: here, the dataset's NOTICE
    assert [(Path(x["file"]).name, x["reason"]) for xs in report["ignored"].values()
            for x in xs] == [("NOTICE.md", "not_read_by_layout")]
    # same input, same fingerprint
    again = ingest(IsicLayout(), isic_dir, tmp_path / "again", size=32)
    assert again["manifest"]["fingerprint"] == result["manifest"]["fingerprint"]


# --------------------------------------------------------------------- bad-input matrix


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """One file per bad case, plus good records, in the generic folder layout."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(4):
        _lesion_image(src / "images" / f"good{i}.png", seed=i)
        _mask(src / "masks" / f"good{i}.png")
    (src / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _mask(src / "masks" / "corrupt.png")
    _lesion_image(src / "images" / "nomask.png")
    _lesion_image(src / "images" / "mismatch.png")
    _mask(src / "masks" / "mismatch.png", w=20, h=20)
    _lesion_image(src / "images" / "grey.png")
    _mask(src / "masks" / "grey.png", values=(10, 200))
    _lesion_image(src / "images" / "empty.png")
    _mask(src / "masks" / "empty.png", values=(0, 0))
    _lesion_image(src / "images" / "dup.png")
    _lesion_image(src / "images" / "dup.jpg")
    _mask(src / "masks" / "dup.png")
    _mask(src / "masks" / "orphan.png")
    (src / "images" / "zerobytes.png").write_bytes(b"")
    pd.DataFrame({
        "name": ["good0", "good1", "good2", "grey", "dup", "ghost", "good1"],
        "Age": ["40", "55", "abc", "70", "30", "20", "99"],
        "Sex": ["F", "M", "F", "M", "F", "M", "M"],
    }).to_csv(src / "meta.csv", sep=";", index=False, encoding="utf-8-sig")
    return src


def test_every_bad_case_is_named_in_the_report(bad_folder, tmp_path):
    out = tmp_path / "out"
    layout = FolderLayout("{id}.png", "meta.csv", {"id": "name", "age": "Age", "sex": "Sex"})
    ingest(layout, bad_folder, out, size=16)
    report = json.loads((out / "report.json").read_text())
    ids = {reason: sorted(x["id"] for x in items) for reason, items in report["issues"].items()}
    assert ids == {
        "unreadable_image": ["corrupt", "zerobytes"],
        "missing_mask": ["nomask"],
        "size_mismatch": ["mismatch"],
        "empty_mask": ["empty"],
        "duplicate_id": ["dup"],
        "orphan_mask": ["orphan"],
        "non_binary_mask": ["grey"],
        "unknown_metadata_id": ["ghost"],
        "duplicate_metadata_row": ["good1"],
        "invalid_metadata_value": ["good2"],
        "no_metadata": ["good3"],
    }
    assert report["usable"] == 6                            # good0-3, grey, first dup
    assert report["total_images"] == 12
    # nothing lost: every unusable file is kept under quarantine/<reason>/
    q = out / "quarantine"
    assert (q / "unreadable_image" / "corrupt.jpg").is_file()
    assert (q / "size_mismatch" / "mismatch.png").is_file()
    assert (q / "duplicate_id" / "dup.png").is_file()
    assert (q / "orphan_mask" / "orphan.png").is_file()
    df = read_table(out, columns=["id", "mask", "age", "sex", "mask_binarised", "orig_width"])
    row = df.set_index("id")
    assert row.loc["grey", "mask_binarised"] and decode_mask(row.loc["grey", "mask"], 16, 16).any()
    assert row.loc["good0", "age"] == 40 and row.loc["good0", "sex"] == "f"
    assert np.isnan(row.loc["good2", "age"])               # 'abc' → unknown, reported
    assert row.loc["good1", "age"] == 55                   # first of duplicated rows
    assert (df.orig_width == 40).all()                     # non-square originals kept


def test_zero_usable_records_is_a_clear_nonzero_exit(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    (src / "images" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(IngestError, match="no usable records"):
        ingest(FolderLayout(), src, tmp_path / "o")
    code = main(["data", "ingest", "--layout", "folder", str(src), "--out", str(tmp_path / "o2")])
    assert code == 2
    assert "no usable records" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["counts"] == {
        "unreadable_image": 1}


def test_layout_errors_name_what_was_expected(tmp_path):
    with pytest.raises(LayoutError, match="images/"):
        FolderLayout().discover(tmp_path)
    with pytest.raises(LayoutError, match="no ISIC image folder"):
        IsicLayout().discover(tmp_path)
    with pytest.raises(LayoutError, match="IMDxxx"):
        Ph2Layout().discover(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(LayoutError, match="outside the data folder"):
        FolderLayout(metadata_csv="../../etc/passwd").discover(tmp_path)


def test_ph2_layout(tmp_path):
    root = tmp_path / "PH2 Dataset images"
    for i, name in enumerate(["IMD002", "IMD003"]):
        case = root / name
        (case / f"{name}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{name}_lesion").mkdir()
        _lesion_image(case / f"{name}_Dermoscopic_Image" / f"{name}.bmp", 76, 57, seed=i)
        _mask(case / f"{name}_lesion" / f"{name}_lesion.bmp", 76, 57)
    (root / "IMD009" / "IMD009_Dermoscopic_Image").mkdir(parents=True)
    _lesion_image(root / "IMD009" / "IMD009_Dermoscopic_Image" / "IMD009.bmp", 76, 57)
    ingest(Ph2Layout(), tmp_path, tmp_path / "out", size=16, fractions=(0.5, 0.5, 0.0))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["usable"] == 2 and report["counts"] == {"missing_mask": 1}
    df = read_table(tmp_path / "out")
    assert sorted(df.id) == ["IMD002", "IMD003"] and (df.orig_width == 76).all()


PH2_TABLE = """\
|| Name || Histological Diagnosis || Common Nevus || Atypical Nevus || Melanoma || Asymmetry ||
|| IMD002 ||                       ||      X       ||                ||          ||     0     ||
|| IMD003 ||                       ||              ||                ||     X    ||     2     ||
|| IMD004 ||                       ||              ||       X        ||          ||     1     ||

Legend: Asymmetry 0 - Fully Symmetric ...
"""


def test_ph2_reads_the_release_diagnosis_table_and_any_image_suffix(tmp_path):
    """PH2_dataset.txt beside the images gives the clinical diagnosis; an image saved as PNG
    instead of BMP is read; a table row without an image is listed, not dropped silently."""
    root = tmp_path / "PH2Dataset"
    for i, (name, suffix) in enumerate([("IMD002", "bmp"), ("IMD003", "png")]):
        case = root / "PH2 Dataset images" / name
        (case / f"{name}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{name}_lesion").mkdir()
        _lesion_image(case / f"{name}_Dermoscopic_Image" / f"{name}.{suffix}", 76, 57, seed=i)
        _mask(case / f"{name}_lesion" / f"{name}_lesion.{suffix}", 76, 57)
    (root / "PH2_dataset.txt").write_text(PH2_TABLE)
    assert main(["data", "ingest", "--layout", "ph2", str(root / "PH2 Dataset images"),
                 "--out", str(tmp_path / "out"), "--size", "16", "--all-test"]) == 0
    df = read_table(tmp_path / "out").set_index("id")
    assert df["diagnosis"].to_dict() == {"IMD002": "common nevus", "IMD003": "melanoma"}
    assert (df["split"] == "test").all()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [i["id"] for i in report["issues"]["unknown_metadata_id"]] == ["IMD004"]
    (root / "PH2_dataset.txt").write_text("no table here\n")
    assert main(["data", "ingest", "--layout", "ph2", str(root), "--out",
                 str(tmp_path / "out2"), "--size", "16", "--all-test"]) == 2


def test_the_original_size_mask_is_kept_for_original_resolution_scoring(tmp_path):
    from htl_ray.data.schema import RECORDS_FILE, decode_mask_png

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    _lesion_image(src / "images" / "a.png", 50, 30)
    mask = np.zeros((30, 50), np.uint8)
    mask[5:20, 10:41] = 255
    Image.fromarray(mask).save(src / "masks" / "a.png")
    _lesion_image(src / "images" / "b.png", 16, 16)
    _mask(src / "masks" / "b.png", 16, 16)
    ingest(FolderLayout(), src, tmp_path / "out", size=16, fractions=(0, 0, 1))
    rows = pd.read_parquet(tmp_path / "out" / RECORDS_FILE).set_index("id")
    assert np.array_equal(decode_mask_png(rows.loc["a", "orig_mask"]), mask > 0)
    assert rows.loc["b", "orig_mask"] is None          # stored at its original size already


def test_isic_layout_with_downsampled_names_and_one_hot_diagnosis(tmp_path):
    src = tmp_path / "isic"
    inp, gt = src / "ISIC2018_Task1-2_Training_Input", src / "ISIC2018_Task1_Training_GroundTruth"
    inp.mkdir(parents=True)
    gt.mkdir()
    for i in range(3):
        _lesion_image(inp / f"ISIC_000000{i}.jpg", seed=i)
        _mask(gt / f"ISIC_000000{i}_segmentation.png")
    (src / "meta.csv").write_text(
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
        "ISIC_0000000_downsampled,45,head/neck,L1,male\n"
        "ISIC_0000001,,,L1,\n"
        "ISIC_0000002,30,anterior torso,,female\n")
    (src / "dx.csv").write_text("image,MEL,NV,BCC\nISIC_0000000_downsampled,1.0,0.0,0.0\n"
                                "ISIC_0000001,0.0,1.0,0.0\nISIC_0000002,0.0,0.0,0.0\n")
    ingest(IsicLayout("meta.csv", "dx.csv"), src, tmp_path / "o", size=16,
           fractions=(0.34, 0.33, 0.33))
    df = read_table(tmp_path / "o").set_index("id")
    assert df.loc["ISIC_0000000", "diagnosis"] == "MEL" and df.loc["ISIC_0000000", "age"] == 45
    assert df.loc["ISIC_0000001", "diagnosis"] == "NV" and pd.isna(df.loc["ISIC_0000001", "sex"])
    assert pd.isna(df.loc["ISIC_0000002", "diagnosis"])     # all-zero one-hot → unknown
    assert df.loc["ISIC_0000000", "split"] == df.loc["ISIC_0000001", "split"]   # lesion L1


def _isic_folder(src: Path, lesions: list[str]) -> Path:
    inp, gt = src / "ISIC2018_Task1-2_Training_Input", src / "ISIC2018_Task1_Training_GroundTruth"
    inp.mkdir(parents=True)
    gt.mkdir()
    rows = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    for i, lesion in enumerate(lesions):
        _lesion_image(inp / f"ISIC_000000{i}.jpg", seed=i)
        _mask(gt / f"ISIC_000000{i}_segmentation.png")
        rows.append(f"ISIC_000000{i}_downsampled,45,back,{lesion},male")
    (src / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(rows) + "\n")
    return src


def test_one_collection_held_out_by_drop_and_ingested_alone_by_keep(tmp_path):
    """Two ingests of one folder: without the MSK4_ lesions, and only them as a test-only
    dataset; each says what it left out, and the manifests (and fingerprints) differ from an
    ingest of everything, whose fingerprint does not change by the option existing."""
    src = _isic_folder(tmp_path / "isic", ["MSK4_1", "MSK4_2", "", "HAM_3", "HAM_4"])
    args = ["data", "ingest", "--layout", "isic", str(src), "--size", "16"]
    assert main([*args, "--out", str(tmp_path / "core"), "--drop", "lesion_id=MSK4_*",
                 "--fractions", "0.34,0.33,0.33"]) == 0
    assert main([*args, "--out", str(tmp_path / "msk4"), "--keep", "lesion_id=MSK4_*",
                 "--all-test"]) == 0
    assert main([*args, "--out", str(tmp_path / "all"), "--fractions", "0.34,0.33,0.33"]) == 0
    core, msk4 = read_table(tmp_path / "core"), read_table(tmp_path / "msk4")
    assert sorted(core.id) == ["ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    assert sorted(msk4.id) == ["ISIC_0000000", "ISIC_0000001"] and set(msk4.split) == {"test"}
    report = json.loads((tmp_path / "core" / "report.json").read_text())
    assert report["left_out"] == 2 and report["usable"] == 3 and report["total_images"] == 5
    assert "--drop lesion_id=MSK4_*: 2 of 5 images left out (not ingested)" in report["notes"]
    assert report["counts"] == {} and report["ignored"] == {}    # not defects, not unused files
    manifests = {name: json.loads((tmp_path / name / "manifest.json").read_text())
                 for name in ("core", "msk4", "all")}
    assert manifests["core"]["params"]["selections"] == ["--drop lesion_id=MSK4_*"]
    # an ingest without a selection hashes the params it always did: its fingerprint is kept
    assert set(manifests["all"]["params"]) == {"layout", "size", "fractions", "seed",
                                               "allow_empty_masks"}
    assert len({m["fingerprint"] for m in manifests.values()}) == 3


def test_a_selection_mistake_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    src = _isic_folder(tmp_path / "isic", ["MSK4_1", "HAM_2"])
    args = ["data", "ingest", "--layout", "isic", str(src), "--size", "16", "--all-test"]
    earlier = tmp_path / "o" / "quarantine" / "unreadable_image" / "x.jpg"   # a past ingest's
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"kept")
    for option, message in (
            (["--drop", "lesionid=MSK4_*"], "error: --drop 'lesionid=MSK4_*': unknown key "
                                            "'lesionid' (did you mean lesion_id?)"),
            (["--drop", "lesion_id=MSK_4*"], "error: --drop lesion_id=MSK_4*: no image's "
                                             "lesion_id matches 'MSK_4*' (values seen: HAM_2, "
                                             "MSK4_1)"),
            (["--keep", "lesion_id=MSK4_*", "--drop", "sex=male"], "together they leave no "
                                                                    "image to ingest")):
        assert main([*args, "--out", str(tmp_path / "o"), *option]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1
        assert not (tmp_path / "o" / "manifest.json").exists()
        assert earlier.read_bytes() == b"kept"


# ------------------------------------------------------- hostile and unusual encodings


@pytest.fixture
def unusual_folder(tmp_path) -> Path:
    """Encodings real folders contain (16-bit and RGBA masks, grey and RGBA images), a JPEG cut
    short by an interrupted copy, and an image whose header claims 144 megapixels."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    box = (slice(8, 20), slice(10, 25))
    _lesion_image(src / "images" / "mask16.png")
    m16 = np.zeros((30, 40), np.uint16)
    m16[box] = 65535
    Image.fromarray(m16).save(src / "masks" / "mask16.png")
    _lesion_image(src / "images" / "maskrgba.png")
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[box] = (255, 255, 255, 255)
    Image.fromarray(rgba, "RGBA").save(src / "masks" / "maskrgba.png")
    grey = np.full((30, 40), 180, np.uint8)
    grey[box] = 60
    Image.fromarray(grey, "L").save(src / "images" / "greyimg.png")
    _mask(src / "masks" / "greyimg.png")
    rgba_img = np.full((30, 40, 4), 255, np.uint8)
    rgba_img[..., :3] = 170
    rgba_img[box] = (60, 40, 30, 255)
    Image.fromarray(rgba_img, "RGBA").save(src / "images" / "rgbaimg.png")
    _mask(src / "masks" / "rgbaimg.png")
    full = src / "full.jpg"
    _lesion_image(full, w=400, h=300)
    Image.open(full).save(full, quality=95)
    data = full.read_bytes()
    (src / "images" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    full.unlink()
    _mask(src / "masks" / "truncated.png", w=400, h=300)
    Image.new("1", (12_000, 12_000)).save(src / "images" / "bomb.png")       # ~20 KB file
    _mask(src / "masks" / "bomb.png")
    return src


def test_unusual_encodings_are_converted_and_hostile_files_quarantined(unusual_folder, tmp_path):
    out = tmp_path / "out"
    ingest(FolderLayout("{id}.png"), unusual_folder, out, size=16)
    report = json.loads((out / "report.json").read_text())
    issues = {reason: sorted(x["id"] for x in items) for reason, items in report["issues"].items()}
    assert issues == {"unreadable_image": ["bomb", "truncated"]}
    details = {x["id"]: x["detail"] for x in report["issues"]["unreadable_image"]}
    assert "too large to decode safely" in details["bomb"]
    assert "truncated" in details["truncated"]
    assert (out / "quarantine" / "unreadable_image" / "bomb.png").is_file()
    df = read_table(out, columns=["id", "image", "mask", "mask_binarised"]).set_index("id")
    assert sorted(df.index) == ["greyimg", "mask16", "maskrgba", "rgbaimg"]
    for rid in df.index:                      # every mask the same 12×15 box, scaled to 16×16
        mask = decode_mask(df.loc[rid, "mask"], 16, 16).astype(bool).reshape(16, 16)
        assert 0.12 < mask.mean() < 0.2, rid
        assert not df.loc[rid, "mask_binarised"], rid       # {0, max} masks are binary
        image = np.frombuffer(df.loc[rid, "image"], np.uint8).reshape(16, 16, 3)
        assert image[mask].mean() < image[~mask].mean() - 50, rid   # lesion darker: RGB kept


def test_metadata_path_outside_the_data_folder_is_refused(bad_folder, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("name,Age\ngood0,40\n")
    layout = FolderLayout("{id}.png", "../secret.csv", {"id": "name", "age": "Age"})
    with pytest.raises(LayoutError, match="metadata file is outside the data folder"):
        ingest(layout, bad_folder, tmp_path / "out", size=16)
    assert not (tmp_path / "out").exists()


def test_every_file_under_src_is_used_quarantined_or_listed_with_why(tmp_path):
    """Formats, degenerate records, hidden files, a link loop and a broken link: nothing
    under SRC disappears without a word, and each record's reason is its own (the mask of an
    image in an unread format is not an orphan)."""
    import os

    src = tmp_path / "src"
    (src / "images" / "nested").mkdir(parents=True)
    (src / "masks").mkdir()
    for name, suffix in (("ok", ".png"), ("webp", ".webp"), ("gif", ".gif")):
        _lesion_image(src / "images" / f"{name}{suffix}")
        _mask(src / "masks" / f"{name}.png")
    (src / "images" / "phone.heic").write_bytes(b"ftypheic....")
    _mask(src / "masks" / "phone.png")
    _lesion_image(src / "images" / "tiny.png", w=8, h=8)
    _mask(src / "masks" / "tiny.png", w=8, h=8)
    _lesion_image(src / "images" / "strip.png", w=400, h=30)
    _mask(src / "masks" / "strip.png", w=400, h=30)
    _lesion_image(src / "images" / "full.png")
    _mask(src / "masks" / "full.png", values=(255, 255))
    (src / "images" / ".DS_Store").write_bytes(b"\0")
    (src / "images" / "notes.txt").write_text("scanned 2019")
    _lesion_image(src / "images" / "nested" / "deeper.png")       # not where the layout reads
    os.symlink(src, src / "images" / "loop")                      # a link back up: a loop
    os.symlink(src / "gone.png", src / "images" / "broken.png")
    os.symlink(src / "masks", src / "images" / "also_masks")      # a folder listed already
    os.symlink(src / "cycle_b", src / "cycle_a")                  # a cycle of two links
    os.symlink(src / "cycle_a", src / "cycle_b")
    (src / "meta.csv").write_text("id,age,,\nok,30,,\n")        # empty trailing columns

    ingest(FolderLayout(metadata_csv="meta.csv"), src, tmp_path / "out", size=16)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    issues = {reason: sorted(x["id"] for x in xs) for reason, xs in report["issues"].items()}
    assert issues == {"unsupported_format": ["phone"], "tiny_image": ["tiny"],
                      "extreme_aspect_ratio": ["strip"], "full_mask": ["full"],
                      "no_metadata": ["gif", "webp"]}
    assert report["usable"] == 3                                  # ok, webp, gif
    assert sorted(read_table(tmp_path / "out").id) == ["gif", "ok", "webp"]
    ignored = {reason: sorted(Path(x["file"]).name for x in xs)
               for reason, xs in report["ignored"].items()}
    assert ignored == {"hidden": [".DS_Store"], "link_loop": ["cycle_a", "cycle_b", "loop"],
                       "broken_link": ["broken.png"], "second_path": ["also_masks"],
                       "not_read_by_layout": ["deeper.png", "notes.txt"]}
    # the quarantined files are copied under their true reason, the mask with its image
    assert sorted(p.name for p in (tmp_path / "out" / "quarantine" / "unsupported_format")
                  .rglob("*") if p.is_file()) == ["phone.heic", "phone.png"]
