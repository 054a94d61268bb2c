"""Folder layouts we can ingest: where the images, masks and metadata of each live.

A layout only *discovers* files and reads metadata into one normalised table
(`id, age, sex, site, lesion_id, diagnosis`); decoding and validation are shared (ingest.py).
New layouts register themselves in `LAYOUTS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from htl_ray.data.images import READ_SUFFIXES, UNREAD_SUFFIXES
from htl_ray.errors import UserError

IMAGE_SUFFIXES = READ_SUFFIXES
# what a layout takes as a record's image: every image file, also one it cannot read (that
# record is then quarantined as unsupported_format with its mask, not its mask as an orphan)
CANDIDATE_SUFFIXES = READ_SUFFIXES + UNREAD_SUFFIXES
META_FIELDS = ("age", "sex", "site", "lesion_id", "diagnosis")


@dataclass
class Candidate:
    id: str
    image_path: Path
    mask_path: Path | None


@dataclass
class Discovery:
    """What a layout found: candidate pairs, metadata, and files it could not pair."""

    candidates: list[Candidate]
    metadata: pd.DataFrame | None = None
    orphan_masks: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metadata_issues: list[tuple[str, str, str]] = field(default_factory=list)  # reason, id, detail
    stats: dict[str, int] = field(default_factory=dict)
    read_files: list[Path] = field(default_factory=list)   # metadata and diagnosis tables used


class LayoutError(UserError):
    """The source folder does not look like the requested layout."""


def read_csv_robust(path: Path) -> pd.DataFrame:
    """Read a CSV whatever its delimiter (`,` `;` tab) and with or without a UTF-8 BOM."""
    if not path.is_file():
        raise LayoutError(f"metadata file not found: {path}")
    try:
        df = pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig", dtype=str,
                         keep_default_na=False)
    except Exception as exc:
        raise LayoutError(f"{path}: cannot parse as CSV: {exc}") from exc
    header = _header(path)
    repeated = sorted({c for c in header if c and header.count(c) > 1})   # '' : empty cells
    if repeated:
        raise LayoutError(f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} "
                          "times in the header; which one holds the values is ambiguous: "
                          "rename or remove the others")
    df.columns = [str(c).strip() for c in df.columns]
    # columns without a header name (a spreadsheet's empty trailing cells) carry nothing
    unnamed = [c for c, h in zip(df.columns, [*header, *[""] * len(df.columns)], strict=False)
               if not h and c.startswith("Unnamed:")] if header else []
    df = df.drop(columns=unnamed).astype(str)
    return df.apply(lambda s: s.str.strip()).replace({"": np.nan, "nan": np.nan})


def _header(path: Path) -> list[str]:
    """The CSV's column names as written (pandas renames a repeated one to `name.1`)."""
    import csv

    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = f.readline()
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t|")
    except csv.Error:
        return []
    return [c.strip() for c in next(csv.reader([first], dialect), [])]


def _inside(path: Path, root: Path) -> Path:
    """Refuse metadata paths that escape the data folder (`../../etc/passwd`)."""
    resolved = path.resolve()
    if root.resolve() not in resolved.parents and resolved != root.resolve():
        raise LayoutError(f"{path}: metadata file is outside the data folder {root}")
    return resolved


def _normalise_meta(df: pd.DataFrame, source: Path, column_map: dict[str, str],
                    id_suffixes: tuple[str, ...] = ()) -> tuple[pd.DataFrame, list]:
    """Map user columns onto META_FIELDS, clean ids and ages, and keep the first of duplicates."""
    issues = []
    id_col = column_map.get("id")
    if id_col not in df.columns:
        raise LayoutError(f"{source}: no id column {id_col!r}; columns are {list(df.columns)}")
    out = pd.DataFrame({"id": df[id_col].astype(str)})
    raw_ids = out["id"].copy()
    for suffix in id_suffixes:
        out["id"] = out["id"].str.replace(f"{suffix}$", "", regex=True)
    renamed = int((raw_ids != out["id"]).sum())
    if renamed:
        issues.append(("__stat__", "ids_normalised", str(renamed)))
    for fld in META_FIELDS:
        col = column_map.get(fld)
        if col is None:
            out[fld] = np.nan
            continue
        if col not in df.columns:
            raise LayoutError(f"{source}: column {col!r} (for {fld}) not found; "
                              f"columns are {list(df.columns)}")
        out[fld] = df[col]
    age = pd.to_numeric(out["age"], errors="coerce")
    for i in np.flatnonzero(age.isna() & out["age"].notna()):
        issues.append(("invalid_metadata_value", out["id"].iat[i],
                       f"{source.name}: age {out['age'].iat[i]!r} is not a number; set to unknown"))
    out["age"] = age
    # a column the map leaves out is all NaN (float): .str would fail on it
    out["sex"] = out["sex"].map(lambda v: v.lower() if isinstance(v, str) else v)
    dup = out["id"].duplicated(keep="first")
    for i in np.flatnonzero(dup):
        issues.append(("duplicate_metadata_row", out["id"].iat[i],
                       f"{source.name}: second metadata row for this id; the first is used"))
    return out[~dup].set_index("id"), issues


def _take_stats(disc: Discovery, issues: list[tuple[str, str, str]]) -> None:
    for reason, key, value in issues:
        if reason == "__stat__":
            disc.stats[key] = disc.stats.get(key, 0) + int(value)
        else:
            disc.metadata_issues.append((reason, key, value))


def _one_hot_diagnosis(df: pd.DataFrame, source: Path, id_col: str,
                       id_suffixes: tuple[str, ...]) -> pd.Series:
    """ISIC ground-truth CSVs hold one column per diagnosis with 0/1 values → its name."""
    classes = [c for c in df.columns if c != id_col]
    values = df[classes].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
    names = np.array(classes, dtype=object)[values.argmax(1)]
    names[values.max(1) <= 0] = None
    ids = df[id_col].astype(str)
    for suffix in id_suffixes:
        ids = ids.str.replace(f"{suffix}$", "", regex=True)
    s = pd.Series(names, index=ids.to_numpy(), name="diagnosis")
    return s[~s.index.duplicated(keep="first")]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in CANDIDATE_SUFFIXES)


class Layout:
    name = ""

    def discover(self, src: Path) -> Discovery:  # pragma: no cover - interface
        raise NotImplementedError


class IsicLayout(Layout):
    """ISIC 2016–2018 Task 1: `*_Input` / `*_Data` image folders, `*_GroundTruth` mask folders
    with `<id>_segmentation.png` (2016: `_Segmentation.png`); archive metadata and one-hot
    diagnosis CSVs are found in SRC or given explicitly."""

    name = "isic"
    ISIC_COLUMNS = {"id": "image", "age": "age_approx", "sex": "sex",
                    "site": "anatom_site_general", "lesion_id": "lesion_id"}
    ID_SUFFIXES = ("_downsampled",)

    def __init__(self, metadata_csv: str | None = None, diagnosis_csv: str | None = None):
        self.metadata_csv = metadata_csv
        self.diagnosis_csv = diagnosis_csv

    def discover(self, src: Path) -> Discovery:
        image_dirs = sorted(d for d in src.iterdir() if d.is_dir()
                            and re.search(r"(Input|Data)$", d.name))
        mask_dirs = sorted(d for d in src.iterdir() if d.is_dir()
                           and d.name.endswith("GroundTruth"))
        if not image_dirs:
            raise LayoutError(f"{src}: no ISIC image folder (a folder named like "
                              "'ISIC2018_Task1-2_Training_Input' or '..._Data')")
        if not mask_dirs:
            raise LayoutError(f"{src}: no ISIC mask folder (named like "
                              "'ISIC2018_Task1_Training_GroundTruth')")
        masks: dict[str, Path] = {}
        for d in mask_dirs:
            for p in _image_files(d):
                m = re.match(r"(.+?)_[Ss]egmentation$", p.stem)
                if m:
                    masks.setdefault(m.group(1), p)
        candidates = []
        for d in image_dirs:
            for p in _image_files(d):
                if "_superpixels" in p.stem:     # listed as ignored by the ingest report
                    continue
                candidates.append(Candidate(p.stem, p, masks.get(p.stem)))
        image_ids = {c.id for c in candidates}
        disc = Discovery(candidates, orphan_masks=[p for k, p in masks.items()
                                                   if k not in image_ids])
        meta_path = self._find(src, self.metadata_csv, r"Metadata.*\.csv$")
        diag_path = self._find(src, self.diagnosis_csv, r"GroundTruth.*\.csv$")
        meta = None
        if meta_path:
            raw = read_csv_robust(meta_path)
            cmap = dict(self.ISIC_COLUMNS)
            if "image" not in raw.columns and "isic_id" in raw.columns:
                cmap["id"] = "isic_id"
            cmap = {k: v for k, v in cmap.items() if k == "id" or v in raw.columns}
            meta, issues = _normalise_meta(raw, meta_path, cmap, self.ID_SUFFIXES)
            _take_stats(disc, issues)
            disc.read_files.append(meta_path)
            disc.notes.append(f"metadata: {meta_path} ({len(raw)} rows)")
            renamed = disc.stats.get("ids_normalised", 0)
            if renamed:
                disc.notes.append(f"metadata ids normalised: {renamed} rows named "
                                  "'<id>_downsampled' matched to image '<id>'")
        if diag_path:
            raw = read_csv_robust(diag_path)
            id_col = "image" if "image" in raw.columns else raw.columns[0]
            diag = _one_hot_diagnosis(raw, diag_path, id_col, self.ID_SUFFIXES)
            disc.read_files.append(diag_path)
            disc.notes.append(f"diagnosis: {diag_path} ({len(raw)} rows)")
            if meta is None:
                meta = pd.DataFrame(index=diag.index, columns=list(META_FIELDS), dtype=object)
                meta["age"] = np.nan
                disc.metadata_issues += [("unknown_metadata_id", i, f"{diag_path.name}")
                                         for i in diag.index if i not in image_ids]
            else:
                extra = [i for i in diag.index if i not in meta.index and i not in image_ids]
                disc.metadata_issues += [("unknown_metadata_id", i, f"{diag_path.name}")
                                         for i in extra]
            meta["diagnosis"] = diag.reindex(meta.index)
        disc.metadata = meta
        return disc

    @staticmethod
    def _find(src: Path, given: str | None, pattern: str) -> Path | None:
        if given:
            p = Path(given)
            return _inside(p if p.is_absolute() else src / p, src)
        found = sorted(p for p in src.iterdir() if p.is_file() and re.search(pattern, p.name))
        return found[0] if found else None


class Ph2Layout(Layout):
    """PH2: `IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp` and `IMDxxx_lesion/IMDxxx_lesion.bmp`
    (SRC may be the dataset root or its `PH2 Dataset images` folder; any image suffix
    ingestion reads). The clinical diagnosis (common nevus, atypical nevus, melanoma) comes
    from the table the release ships beside the images, `PH2_dataset.txt` (or `.xlsx`, which
    needs openpyxl), when it is found in SRC or its parent."""

    name = "ph2"
    TABLE_NAMES = ("PH2_dataset.txt", "PH2_dataset.xlsx")
    DIAGNOSES = {"Common Nevus": "common nevus", "Atypical Nevus": "atypical nevus",
                 "Melanoma": "melanoma"}

    def discover(self, src: Path) -> Discovery:
        candidates = []
        for folder in sorted(src.rglob("*_Dermoscopic_Image")):
            case = folder.parent
            images = _image_files(folder) if folder.is_dir() else []
            if not images:
                continue
            masks = _image_files(case / f"{case.name}_lesion") \
                if (case / f"{case.name}_lesion").is_dir() else []
            mask = next((m for m in masks if m.stem == f"{case.name}_lesion"), None)
            candidates.append(Candidate(case.name, images[0], mask))
        if not candidates:
            raise LayoutError(f"{src}: no PH2 images (expected IMDxxx/IMDxxx_Dermoscopic_Image/"
                              "IMDxxx.bmp)")
        disc = Discovery(candidates)
        table = next((d / n for d in (src, src.parent) for n in self.TABLE_NAMES
                      if (d / n).is_file()), None)
        if table is not None:
            disc.read_files.append(table)
            diagnosis = self._diagnoses(table, disc)
            if diagnosis:
                meta = pd.DataFrame(index=pd.Index(sorted(diagnosis), name="id"),
                                    columns=list(META_FIELDS), dtype=object)
                meta["age"] = np.nan
                meta["diagnosis"] = pd.Series(diagnosis)
                disc.metadata = meta
                disc.notes.append(f"diagnosis: {table} ({len(diagnosis)} rows)")
        return disc

    def _diagnoses(self, table: Path, disc: Discovery) -> dict[str, str]:
        """{IMDxxx: diagnosis} from the release's table: the clinical-diagnosis column marked
        with an X."""
        if table.suffix == ".xlsx":
            try:
                frame = pd.read_excel(table, dtype=str).fillna("")
            except ImportError:
                disc.notes.append(f"{table}: reading .xlsx needs openpyxl (pip install "
                                  "openpyxl), or put PH2_dataset.txt beside it; diagnosis "
                                  "left unknown")
                return {}
            header = [str(c).strip() for c in frame.columns]
            rows = [[str(v).strip() for v in r] for r in frame.itertuples(index=False)]
        else:
            lines = [ln for ln in table.read_text(errors="replace").splitlines()
                     if ln.strip().startswith("||")]
            cells = [[c.strip() for c in ln.strip().strip("|").split("||")] for ln in lines]
            header = next((c for c in cells if c and c[0].lower().startswith("name")), None)
            if header is None:
                raise LayoutError(f"{table}: no header row starting with 'Name' (the PH2 "
                                  "release's table: || Name || Histological Diagnosis || ...)")
            rows = [c for c in cells if c is not header]
        cols = {name: i for i, name in enumerate(header)}
        found = [k for k in self.DIAGNOSES if k in cols]
        if not found:
            raise LayoutError(f"{table}: none of the columns {list(self.DIAGNOSES)}; "
                              f"columns are {header}")
        out = {}
        for row in rows:
            rid = row[0].strip() if row else ""
            if not re.match(r"IMD\d+", rid):
                continue
            marked = [self.DIAGNOSES[k] for k in found
                      if cols[k] < len(row) and row[cols[k]].strip().upper() == "X"]
            if len(marked) == 1:
                out[rid] = marked[0]
            else:
                disc.metadata_issues.append(("invalid_metadata_value", rid,
                                             f"{table.name}: {len(marked)} diagnoses marked"))
        return out


class FolderLayout(Layout):
    """Generic `images/` + `masks/`; the mask of image `<id>.<ext>` is `mask_pattern` formatted
    with `id` (default `{id}.png`); optional metadata CSV with a column mapping
    (`id=image_name,age=Age,sex=Sex,site=site,lesion_id=patient,diagnosis=dx`)."""

    name = "folder"

    def __init__(self, mask_pattern: str = "{id}.png", metadata_csv: str | None = None,
                 column_map: dict[str, str] | None = None):
        if "{id}" not in mask_pattern:
            raise LayoutError(f"mask pattern {mask_pattern!r} must contain '{{id}}'")
        self.mask_pattern = mask_pattern
        self.metadata_csv = metadata_csv
        self.column_map = {"id": "id", **(column_map or {})}

    def discover(self, src: Path) -> Discovery:
        images_dir, masks_dir = src / "images", src / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise LayoutError(f"{src}: expected folder {d.name}/ (folder layout: images/ + "
                                  "masks/)")
        candidates = []
        used_masks = set()
        for p in _image_files(images_dir):
            mask = masks_dir / self.mask_pattern.format(id=p.stem)
            if mask.is_file():
                used_masks.add(mask.resolve())
            candidates.append(Candidate(p.stem, p, mask if mask.is_file() else None))
        orphans = [p for p in _image_files(masks_dir) if p.resolve() not in used_masks]
        disc = Discovery(candidates, orphan_masks=orphans)
        if self.metadata_csv:
            path = Path(self.metadata_csv)
            path = _inside(path if path.is_absolute() else src / path, src)
            raw = read_csv_robust(path)
            meta, issues = _normalise_meta(raw, path, self.column_map)
            disc.metadata = meta
            disc.read_files.append(path)
            _take_stats(disc, issues)
            disc.notes.append(f"metadata: {path} ({len(raw)} rows)")
        return disc


LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (IsicLayout, Ph2Layout, FolderLayout)}


def parse_column_map(text: str | None) -> dict[str, str]:
    """`id=image,age=Age` → {'id': 'image', 'age': 'Age'}; keys must be known fields."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise LayoutError(f"--column-map: {part!r} is not field=column")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in ("id", *META_FIELDS):
            raise LayoutError(f"--column-map: unknown field {k!r}; expected one of "
                              f"{['id', *META_FIELDS]}")
        out[k] = v
    return out
