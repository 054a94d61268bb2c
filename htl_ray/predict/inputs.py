"""What `htl-ray predict` reads: image files under a folder, or one split of a dataset.

A folder is searched recursively (symbolic links followed, each real folder once, so a link
loop ends), for every suffix ingestion reads. Each image's id is its file name without the
suffix; when two files share one (`a/x.jpg`, `b/x.png`), their ids are their relative paths
with `/` written `__`, so no mask overwrites another. Files that are not images are listed,
not dropped silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from htl_ray.config import ConfigError
from htl_ray.data.layouts import IMAGE_SUFFIXES


@dataclass
class Inputs:
    """The images to predict (rows for Ray Data) and what was passed over, with why."""

    rows: list[dict]
    kind: str                                  # "folder" or "dataset"
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
        if excluded is not None and (here == excluded or excluded in here.parents):
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
    stems: dict[str, int] = {}
    for p in found:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    rows, notes = [], []
    clashes = sorted(s for s, n in stems.items() if n > 1)
    for p in found:
        rel = p.relative_to(root)
        rid = p.stem if stems[p.stem] == 1 else "__".join(rel.with_suffix("").parts)
        rows.append({"id": rid, "path": str(p)})
    if clashes:
        notes.append(f"{len(clashes)} file name(s) occur more than once (e.g. {clashes[0]!r}): "
                     "those images are named by their relative path, '/' written '__'")
    return Inputs(rows=rows, kind="folder", skipped=skipped, notes=notes)


def dataset_images(dataset: Path, split: str) -> Inputs:
    """The ids of one split of an ingested dataset (the pixels are read in the actors)."""
    from htl_ray.data.schema import RECORDS_FILE, read_split_table

    path = dataset / RECORDS_FILE
    table = read_split_table(path, ["id"], split if split != "all" else None)
    if table.num_rows == 0:
        raise ConfigError(f"--split: {dataset} has no rows in the {split!r} split")
    return Inputs(rows=[{"id": i} for i in table.column("id").to_pylist()], kind="dataset")


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
