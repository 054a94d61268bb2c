"""What `htl-ray predict` reads: image files under a folder, or one split of a dataset.

A folder is searched recursively (symbolic links followed, each real folder once, so a link
loop ends), for every suffix ingestion reads. Each image's id is its file name without the
suffix; when two files share one (`a/x.jpg`, `b/x.jpg`, or `x.jpg` beside `x.png`), their ids
are their relative paths with `/` written `__` (and the suffix kept when that is still not
enough), checked unique, so no mask overwrites another. Files that are not images are listed,
not dropped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from htl_ray.config import ConfigError
from htl_ray.data.layouts import IMAGE_SUFFIXES
from htl_ray.errors import UserError


@dataclass
class Inputs:
    """The images to predict (rows for Ray Data) and what was passed over, with why."""

    rows: list[dict]
    kind: str                                  # "folder" or "dataset"
    source: str = ""                           # the dataset folder (kind "dataset")
    split: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)   # file, reason
    notes: list[str] = field(default_factory=list)


def folder_images(root: Path, *, exclude: Path | None = None) -> Inputs:
    """Every image file under `root` (not under `exclude`, the output folder)."""
    root = root.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    skipped: list[dict[str, str]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            skipped.append({"file": dirpath, "reason": "folder already searched (a symbolic "
                            "link loop or a second link to it)"})
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        here = Path(dirpath)
        if excluded is not None and (Path(real) == excluded or excluded in Path(real).parents):
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            elif not name.startswith("."):
                skipped.append({"file": str(path), "reason": "not an image file (suffixes read: "
                                + " ".join(IMAGE_SUFFIXES) + ")"})
    ids, clashes = unique_ids([p.relative_to(root) for p in found])
    rows = [{"id": rid, "path": str(p)} for rid, p in zip(ids, found, strict=True)]
    notes = [f"{len(clashes)} file name(s) occur more than once (e.g. {clashes[0]!r}): those "
             "images are named by their relative path, '/' written '__'"] if clashes else []
    return Inputs(rows=rows, kind="folder", skipped=skipped, notes=notes)


def unique_ids(paths: list[Path]) -> tuple[list[str], list[str]]:
    """An id per relative path — the file name without suffix where that is unique; where not,
    the relative path without suffix ('/' as '__'); where even that clashes, that and the
    suffix, then a short hash of the relative path — and the names that clashed."""
    import hashlib

    def by_path(p: Path) -> str:
        return "__".join(p.with_suffix("").parts)

    rules = (by_path,
             lambda p: f"{by_path(p)}_{p.suffix.lstrip('.').lower()}",      # x.jpg beside x.png
             lambda p: f"{by_path(p)}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}")
    ids = [p.stem for p in paths]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    for rule in rules:
        counts: dict[str, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        if max(counts.values(), default=1) == 1:
            break
        ids = [rule(p) if counts[i] > 1 else i for i, p in zip(ids, paths, strict=True)]
    if len(set(ids)) != len(ids):
        raise UserError(f"INPUT: could not give every image a unique id: {sorted(ids)[:5]}")
    return ids, clashes


def dataset_images(dataset: Path, split: str) -> Inputs:
    """The ids of one split of an ingested dataset (the pixels are read in the actors)."""
    from htl_ray.data.schema import RECORDS_FILE, read_split_table

    path = dataset / RECORDS_FILE
    table = read_split_table(path, ["id"], split if split != "all" else None)
    if table.num_rows == 0:
        raise ConfigError(f"--split: {dataset} has no rows in the {split!r} split")
    return Inputs(rows=[{"id": i} for i in table.column("id").to_pylist()], kind="dataset",
                  source=str(dataset.resolve()), split=split)


def discover(source: str | Path, split: str | None, *, exclude: Path | None = None) -> Inputs:
    src = Path(source)
    if not src.exists():
        raise ConfigError(f"INPUT: {src} does not exist (expected a folder of images, or a "
                          "dataset folder with --split)")
    from htl_ray.data.schema import RECORDS_FILE

    if (src / RECORDS_FILE).is_file():
        if split is None:
            raise ConfigError(f"INPUT: {src} is an ingested dataset; name the split to "
                              "predict with --split (train, val, test or all)")
        return dataset_images(src, split)
    if split is not None:
        raise ConfigError(f"--split {split}: INPUT {src} is a folder of images, not an "
                          "ingested dataset (no records.parquet there)")
    if not src.is_dir():
        raise ConfigError(f"INPUT: {src} is a file; give the folder that holds the images")
    inputs = folder_images(src, exclude=exclude)
    if not inputs.rows:
        raise ConfigError(f"INPUT: no image files under {src} (suffixes read: "
                          f"{' '.join(IMAGE_SUFFIXES)})")
    return inputs
