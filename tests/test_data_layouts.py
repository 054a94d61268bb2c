"""htl_ray.data.layouts, by itself (without ingesting): what each layout (folder, ISIC, PH2)
discovers — candidate pairs, orphan masks, the normalised metadata table and every issue with
it — how CSVs of any delimiter are read, and each mistake in a metadata file, a column map or
a mask pattern named with the file and what was expected."""

from __future__ import annotations

import math
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from htl_ray.data.layouts import (
    LAYOUTS,
    META_FIELDS,
    FolderLayout,
    IsicLayout,
    LayoutError,
    Ph2Layout,
    parse_column_map,
    read_csv_robust,
)
from htl_ray.errors import UserError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"image bytes: layouts never decode them")
    return path


# ------------------------------------------------------------------ CSV and column maps


def test_a_csv_is_read_whatever_its_delimiter_bom_and_blanks(tmp_path):
    tab = tmp_path / "tab.csv"
    tab.write_bytes("\ufeffid\tAge\tSex\n a1 \t 40\tF\nb2\t\tnan\n".encode())
    df = read_csv_robust(tab)
    assert list(df.columns) == ["id", "Age", "Sex"]              # no BOM in the first name
    assert df["id"].tolist() == ["a1", "b2"] and df["Age"].iloc[0] == "40"   # text, stripped
    assert math.isnan(df["Age"].iloc[1]) and math.isnan(df["Sex"].iloc[1])   # blank, 'nan'
    semi = tmp_path / "semi.csv"
    semi.write_text("id;age;;\nx;3;;\n")                          # a spreadsheet's empty cells
    assert read_csv_robust(semi).to_dict("list") == {"id": ["x"], "age": ["3"]}


def test_a_repeated_column_or_a_missing_csv_is_named(tmp_path):
    dup = tmp_path / "meta.csv"
    dup.write_text("id,age,sex,age\n1,40,f,41\n")
    with pytest.raises(LayoutError, match=rf"^{dup}: column 'age' appears 2 times in the "
                                          "header; which one holds the values is ambiguous"):
        read_csv_robust(dup)
    with pytest.raises(LayoutError, match=rf"^metadata file not found: {tmp_path / 'no.csv'}$"):
        read_csv_robust(tmp_path / "no.csv")
    assert issubclass(LayoutError, UserError)


def test_a_column_map_is_parsed_and_checked():
    assert parse_column_map(None) == {} and parse_column_map("") == {}
    assert parse_column_map("id=image_name, age = Age ,diagnosis=dx") == {
        "id": "image_name", "age": "Age", "diagnosis": "dx"}
    with pytest.raises(LayoutError, match=r"^--column-map: 'age' is not field=column$"):
        parse_column_map("id=name,age")
    with pytest.raises(LayoutError, match=r"^--column-map: unknown field 'gender'; expected one "
                                          r"of \['id', 'age', 'sex', 'site', 'lesion_id', "
                                          r"'diagnosis'\]$"):
        parse_column_map("gender=Sex")


def test_the_layouts_register_by_name():
    assert {name: cls.__name__ for name, cls in LAYOUTS.items()} == {
        "isic": "IsicLayout", "ph2": "Ph2Layout", "folder": "FolderLayout"}
    assert META_FIELDS == ("age", "sex", "site", "lesion_id", "diagnosis")


# ------------------------------------------------------------------ folder layout


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "src"
    for name in ("b.jpg", "a.png", "c.heic", ".hidden.png"):
        _touch(src / "images" / name)
    for name in ("a_mask.png", "c_mask.png", "zz_mask.png", "notes.txt"):
        _touch(src / "masks" / name)
    (src / "meta.csv").write_text(
        "file,Age,Sex,dx\n"
        "a,40,F,nevus\n"
        "b,old,M,melanoma\n"
        "a,99,M,other\n")
    return src


def test_the_folder_layout_pairs_images_with_masks_by_its_pattern(folder):
    disc = FolderLayout("{id}_mask.png").discover(folder)
    assert [(c.id, c.image_path.name, c.mask_path and c.mask_path.name)
            for c in disc.candidates] == [("a", "a.png", "a_mask.png"), ("b", "b.jpg", None),
                                          ("c", "c.heic", "c_mask.png")]   # read or not
    assert [p.name for p in disc.orphan_masks] == ["zz_mask.png"]
    assert disc.metadata is None and disc.read_files == [] and disc.metadata_issues == []


def test_the_folder_layouts_metadata_is_normalised_and_its_issues_listed(folder):
    layout = FolderLayout("{id}_mask.png", "meta.csv",
                          parse_column_map("id=file,age=Age,sex=Sex,diagnosis=dx"))
    disc = layout.discover(folder)
    meta = disc.metadata
    assert list(meta.columns) == list(META_FIELDS) and meta.index.name == "id"
    assert meta.index.tolist() == ["a", "b"]                      # the first of two 'a' rows
    assert meta.loc["a", "age"] == 40.0 and meta.loc["a", "sex"] == "f"
    assert math.isnan(meta.loc["b", "age"]) and meta.loc["b", "diagnosis"] == "melanoma"
    assert meta["site"].isna().all() and meta["lesion_id"].isna().all()    # not mapped
    assert disc.metadata_issues == [
        ("invalid_metadata_value", "b", "meta.csv: age 'old' is not a number; set to unknown"),
        ("duplicate_metadata_row", "a", "meta.csv: second metadata row for this id; the "
                                        "first is used")]
    assert disc.read_files == [(folder / "meta.csv").resolve()]
    assert disc.notes == [f"metadata: {(folder / 'meta.csv').resolve()} (3 rows)"]


def test_the_folder_layout_names_each_mistake(folder):
    with pytest.raises(LayoutError, match=r"^mask pattern '\{stem\}\.png' must contain '\{id\}'$"):
        FolderLayout("{stem}.png")
    meta = (folder / "meta.csv").resolve()
    with pytest.raises(LayoutError, match=rf"^{meta}: no id column 'id'; columns are "
                                          r"\['file', 'Age', 'Sex', 'dx'\]$"):
        FolderLayout(metadata_csv="meta.csv").discover(folder)
    with pytest.raises(LayoutError, match=rf"^{meta}: column 'Site' \(for site\) not found"):
        FolderLayout(metadata_csv="meta.csv",
                     column_map={"id": "file", "site": "Site"}).discover(folder)
    (folder / "masks").rename(folder / "labels")
    with pytest.raises(LayoutError, match=r"expected folder masks/ \(folder layout: images/ \+ "
                                          r"masks/\)"):
        FolderLayout().discover(folder)


# ------------------------------------------------------------------ ISIC layout


def test_the_isic_layout_finds_its_folders_and_tables_by_name(tmp_path):
    src = tmp_path / "isic"
    images = src / "ISIC2017_Training_Data"
    _touch(images / "ISIC_0000001.jpg")
    _touch(images / "ISIC_0000002.jpg")
    _touch(images / "ISIC_0000001_superpixels.png")             # not a lesion image
    _touch(src / "ISIC2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png")
    _touch(src / "ISIC2017_Training_Part1_GroundTruth" / "ISIC_0000009_Segmentation.png")
    (src / "ISIC2017_Training_Data_Metadata.csv").write_text(
        "isic_id,age_approx,sex,anatom_site_general\n"
        "ISIC_0000001_downsampled,55,MALE,back\n"
        "ISIC_0000002,,female,\n")
    (src / "ISIC2017_Training_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\n"
        "ISIC_0000001,1.0,0.0\n"
        "ISIC_0000002,0.0,0.0\n"
        "ISIC_0000777,0.0,1.0\n")
    disc = IsicLayout().discover(src)
    assert [(c.id, c.mask_path and c.mask_path.name) for c in disc.candidates] == [
        ("ISIC_0000001", "ISIC_0000001_segmentation.png"), ("ISIC_0000002", None)]
    assert [p.name for p in disc.orphan_masks] == ["ISIC_0000009_Segmentation.png"]
    meta = disc.metadata
    assert meta.index.tolist() == ["ISIC_0000001", "ISIC_0000002"]   # '_downsampled' gone
    assert meta.loc["ISIC_0000001", "age"] == 55 and meta.loc["ISIC_0000001", "sex"] == "male"
    assert meta.loc["ISIC_0000001", "site"] == "back"
    assert meta.loc["ISIC_0000001", "diagnosis"] == "melanoma"
    assert pd.isna(meta.loc["ISIC_0000002", "diagnosis"])            # no class marked
    assert disc.stats == {"ids_normalised": 1}
    assert disc.metadata_issues == [("unknown_metadata_id", "ISIC_0000777",
                                     "ISIC2017_Training_Part3_GroundTruth.csv")]
    assert [p.name for p in disc.read_files] == ["ISIC2017_Training_Data_Metadata.csv",
                                                 "ISIC2017_Training_Part3_GroundTruth.csv"]
    assert "metadata ids normalised: 1 rows named '<id>_downsampled' matched to image '<id>'" \
        in disc.notes


def test_the_isic_layout_with_a_diagnosis_table_only(tmp_path):
    src = tmp_path / "isic"
    _touch(src / "ISIC2018_Task1-2_Training_Input" / "ISIC_1.jpg")
    _touch(src / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_1_segmentation.png")
    (src / "labels.csv").write_text("image,MEL,NV\nISIC_1,0,1\nISIC_2,1,0\n")
    disc = IsicLayout(diagnosis_csv=str(src / "labels.csv")).discover(src)
    assert disc.metadata["diagnosis"].to_dict() == {"ISIC_1": "NV", "ISIC_2": "MEL"}
    assert disc.metadata["age"].isna().all() and disc.metadata["sex"].isna().all()
    assert disc.metadata_issues == [("unknown_metadata_id", "ISIC_2", "labels.csv")]


def test_the_isic_layout_names_a_missing_folder(tmp_path):
    _touch(tmp_path / "ISIC2018_Task1-2_Training_Input" / "ISIC_1.jpg")
    with pytest.raises(LayoutError, match=r"no ISIC mask folder \(named like "
                                          r"'ISIC2018_Task1_Training_GroundTruth'\)"):
        IsicLayout().discover(tmp_path)


# ------------------------------------------------------------------ PH2 layout


def _ph2_case(root: Path, name: str, mask: bool = True) -> None:
    _touch(root / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp")
    if mask:
        _touch(root / name / f"{name}_lesion" / f"{name}_lesion.bmp")


TABLE = """\
|| Name || Histological Diagnosis || Common Nevus || Atypical Nevus || Melanoma ||
|| IMD002 ||                       ||      X       ||                ||          ||
|| IMD003 ||                       ||      X       ||       X        ||          ||
|| IMD004 ||                       ||              ||                ||    x     ||
"""


def test_the_ph2_layout_reads_its_cases_and_the_table_beside_them(tmp_path):
    images = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    _ph2_case(images, "IMD002")
    _ph2_case(images, "IMD003", mask=False)
    _ph2_case(images, "IMD004")
    (tmp_path / "PH2Dataset" / "PH2_dataset.txt").write_text(TABLE)     # in SRC's parent
    disc = Ph2Layout().discover(images)
    assert [(c.id, c.mask_path and c.mask_path.name) for c in disc.candidates] == [
        ("IMD002", "IMD002_lesion.bmp"), ("IMD003", None), ("IMD004", "IMD004_lesion.bmp")]
    assert disc.metadata["diagnosis"].to_dict() == {"IMD002": "common nevus",
                                                    "IMD004": "melanoma"}
    assert disc.metadata_issues == [("invalid_metadata_value", "IMD003",
                                     "PH2_dataset.txt: 2 diagnoses marked")]
    assert disc.read_files == [tmp_path / "PH2Dataset" / "PH2_dataset.txt"]


def test_a_ph2_table_not_in_the_release_format_is_named(tmp_path):
    _ph2_case(tmp_path, "IMD002")
    table = tmp_path / "PH2_dataset.txt"
    table.write_text("|| Image || Melanoma ||\n|| IMD002 || X ||\n")
    with pytest.raises(LayoutError, match=rf"^{table}: no header row starting with 'Name'"):
        Ph2Layout().discover(tmp_path)
    table.write_text("|| Name || Asymmetry ||\n|| IMD002 || 0 ||\n")
    with pytest.raises(LayoutError, match=rf"^{table}: none of the columns \['Common Nevus', "
                                          r"'Atypical Nevus', 'Melanoma'\]; columns are "
                                          r"\['Name', 'Asymmetry'\]$"):
        Ph2Layout().discover(tmp_path)


def test_a_ph2_spreadsheet_without_openpyxl_leaves_the_diagnosis_unknown_and_says_so(
        tmp_path, monkeypatch):
    # openpyxl is optional: whether or not this environment has it, the test runs as on a
    # machine without it (a None entry in sys.modules makes `import openpyxl` fail)
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    _ph2_case(tmp_path, "IMD002")
    with zipfile.ZipFile(tmp_path / "PH2_dataset.xlsx", "w") as z:     # an .xlsx's shape
        z.writestr("xl/workbook.xml", "<workbook/>")
    disc = Ph2Layout().discover(tmp_path)
    assert disc.metadata is None
    assert disc.notes == [f"{tmp_path / 'PH2_dataset.xlsx'}: reading .xlsx needs openpyxl (pip "
                          "install openpyxl), or put PH2_dataset.txt beside it; diagnosis left "
                          "unknown"]
