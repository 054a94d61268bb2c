"""Ingest a folder layout into the Parquet schema, validating every record.

Nothing is dropped silently: every defect is counted and listed with its reason in
`report.json` (and printed); unusable records are copied, with their reason, under
`quarantine/` in the output folder. Zero usable records is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from htl_ray.data.images import RecordDefect, check_dataset_size, load_pair
from htl_ray.data.inventory import IGNORED, ignored_files
from htl_ray.data.layouts import Discovery, Layout
from htl_ray.data.schema import (
    MANIFEST_FILE,
    REPORT_FILE,
    SCHEMA_VERSION,
    SPLITS,
    encode_mask_png,
    write_records,
)
from htl_ray.data.selection import Selection, select
from htl_ray.data.split import assign_splits, validate_fractions
from htl_ray.errors import UserError
from htl_ray.paths import check_writable_dir

logger = logging.getLogger(__name__)

# reason → (what it means, is the record quarantined?)
REASONS: dict[str, tuple[str, bool]] = {
    "unreadable_image": ("image file cannot be decoded", True),
    "missing_image": ("image file vanished before reading", True),
    "missing_mask": ("no mask file for this image", True),
    "unreadable_mask": ("mask file cannot be decoded", True),
    "size_mismatch": ("mask size differs from image size", True),
    "empty_mask": ("mask has no lesion pixel", True),
    "duplicate_id": ("a second image with an id already seen", True),
    "orphan_mask": ("mask file without a matching image", True),
    "unsupported_format": ("image in a format ingestion does not read", True),
    "tiny_image": ("image side under the minimum", True),
    "extreme_aspect_ratio": ("image too elongated to resize to a square", True),
    "full_mask": ("mask marks every pixel as lesion", True),
    "non_binary_mask": ("mask had grey levels; binarised at >127 and kept", False),
    "no_metadata": ("image has no metadata row; kept with unknown metadata", False),
    "unknown_metadata_id": ("metadata row names an id with no image", False),
    "duplicate_metadata_row": ("second metadata row for one id; first used", False),
    "invalid_metadata_value": ("metadata value could not be parsed; set to unknown", False),
}


class IngestError(UserError):
    """Ingestion cannot produce a usable dataset (e.g. zero usable records)."""


@dataclass
class IngestReport:
    """Counts and listings of every defect, by reason."""

    source: str
    layout: str
    total_images: int = 0
    usable: int = 0
    issues: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=dict)
    metadata_summary: dict[str, Any] = field(default_factory=dict)
    ignored: list[dict[str, str]] = field(default_factory=list)   # files not used, and why
    left_out: int = 0              # images a --keep / --drop selection left out (see notes)

    def add(self, reason: str, record_id: str, detail: str, files: Sequence[Path] = ()) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown ingest reason {reason!r}")
        self.issues.setdefault(reason, []).append(
            {"id": record_id, "detail": detail, "files": [str(f) for f in files]})

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.issues.items())}

    @property
    def quarantined(self) -> int:
        return sum(len(v) for k, v in self.issues.items() if REASONS[k][1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "layout": self.layout,
            "total_images": self.total_images, "left_out": self.left_out,
            "usable": self.usable,
            "quarantined": self.quarantined, "counts": self.counts,
            "split_counts": self.split_counts, "notes": self.notes,
            "metadata_summary": self.metadata_summary,
            "reasons": {k: {"meaning": REASONS[k][0], "quarantined": REASONS[k][1]}
                        for k in self.issues},
            "issues": self.issues,
            "ignored": {reason: [x for x in self.ignored if x["reason"] == reason]
                        for reason in sorted({x["reason"] for x in self.ignored})},
            "ignored_reasons": {k: IGNORED[k] for k in sorted({x["reason"]
                                                                for x in self.ignored})},
        }

    def summary(self) -> str:
        selected = f"{self.left_out} left out by selection, " if self.left_out else ""
        lines = [f"ingest {self.layout} {self.source}: {self.total_images} images, {selected}"
                 f"{self.usable} usable, {self.quarantined} quarantined"]
        for note in self.notes:
            lines.append(f"  {note}")
        for reason, n in self.counts.items():
            meaning, quarantined = REASONS[reason]
            tag = "QUARANTINED" if quarantined else "kept"
            examples = ", ".join(x["id"] for x in self.issues[reason][:5])
            more = " ..." if n > 5 else ""
            lines.append(f"  {reason:<24} {n:>6}  [{tag}] {meaning}: {examples}{more}")
        for reason in sorted({x["reason"] for x in self.ignored}):
            files = [x["file"] for x in self.ignored if x["reason"] == reason]
            lines.append(f"  {reason:<24} {len(files):>6}  [ignored] {IGNORED[reason]}: "
                         + ", ".join(Path(f).name for f in files[:5])
                         + (" ..." if len(files) > 5 else ""))
        ms = self.metadata_summary
        if ms.get("missing"):
            lines.append("  unknown metadata among usable images: " + ", ".join(
                f"{k}={v}" for k, v in ms["missing"].items()))
        if ms.get("lesions_with_several_images"):
            lines.append(f"  lesions with several images: {ms['lesions_with_several_images']} "
                         f"({ms['images_of_repeated_lesions']} images; kept in one split each)")
        if self.split_counts:
            lines.append("  splits: " + ", ".join(f"{k}={v}" for k, v in self.split_counts.items()))
        return "\n".join(lines)


def _quarantine(out: Path, reason: str, files: Sequence[Path]) -> None:
    dest = out / "quarantine" / reason
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f is not None and Path(f).is_file():
            shutil.copy2(f, dest / Path(f).name)


def _meta_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def metadata_summary(rows: list[dict[str, Any]], stats: dict[str, int]) -> dict[str, Any]:
    """How complete the metadata of the usable records is, and how lesions repeat."""
    from collections import Counter

    missing = {k: sum(1 for r in rows if r.get(k) is None)
               for k in ("age", "sex", "site", "diagnosis", "lesion_id")}
    lesions = Counter(r["lesion_id"] for r in rows if r.get("lesion_id"))
    repeated = {k: v for k, v in lesions.items() if v > 1}
    return {"missing": missing, "lesions": len(lesions),
            "lesions_with_several_images": len(repeated),
            "images_of_repeated_lesions": sum(repeated.values()), **stats}


def fingerprint(rows: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 over the pixels, labels, metadata and split of every row plus the ingest params:
    two datasets with the same fingerprint train identically."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for r in sorted(rows, key=lambda r: r["id"]):
        h.update(r["id"].encode())
        h.update(hashlib.sha256(r["image"]).digest())
        h.update(hashlib.sha256(r["mask"]).digest())
        meta = [r.get(k) for k in ("age", "sex", "site", "diagnosis", "lesion_id", "split")]
        h.update(json.dumps(meta, default=str).encode())
    return h.hexdigest()


def finalize_dataset(rows: list[dict[str, Any]], out: Path, report: IngestReport, *,
                     params: dict[str, Any], fractions: Sequence[float], seed: int
                     ) -> dict[str, Any]:
    """Assign splits, write records, manifest and report. Shared by ingest and synth."""
    if not rows:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
        logger.info(report.summary())
        raise IngestError(f"no usable records in {report.source} (layout {report.layout}); "
                          f"see {out / REPORT_FILE} for why each record was rejected")
    splits = assign_splits([r["id"] for r in rows], [r.get("lesion_id") for r in rows],
                           fractions, seed)
    for r, s in zip(rows, splits, strict=True):
        r["split"] = s
    report.split_counts = {s: splits.count(s) for s in SPLITS}
    report.usable = len(rows)
    write_records(rows, out)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint(rows, params),
        "rows": len(rows),
        "split_counts": report.split_counts,
        "params": params,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    logger.info(report.summary())
    logger.info(f"  wrote {out} (fingerprint {manifest['fingerprint'][:12]})")
    return manifest


def ingest(layout: Layout, src: str | Path, out: str | Path, *, size: int = 256,
           fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
           allow_empty_masks: bool = False, selections: Sequence[Selection] = ()
           ) -> dict[str, Any]:
    """Read `src` with `layout`, validate, resize to size×size and write a Parquet dataset —
    only the images that `selections` let through (`data.selection`: `--keep`/`--drop`)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise IngestError(f"source folder not found: {src}")
    check_dataset_size("--size", size, 0)
    fractions = validate_fractions(fractions)
    check_writable_dir(out, "--out")
    disc: Discovery = layout.discover(src)
    check_dataset_size("--size", size, len(disc.candidates))
    report = IngestReport(source=str(src), layout=layout.name, notes=list(disc.notes))
    report.total_images = len(disc.candidates)
    report.ignored = ignored_files(src, [
        *(p for c in disc.candidates for p in (c.image_path, c.mask_path) if p is not None),
        *disc.orphan_masks, *disc.read_files], skip=[out])
    candidates = disc.candidates           # before anything is written: a typo changes nothing
    if selections:
        by_id = {} if disc.metadata is None else disc.metadata.to_dict(orient="index")
        kept, notes = select([c.id for c in candidates], by_id, selections)
        candidates = [c for c in candidates if c.id in kept]
        report.left_out = report.total_images - len(candidates)
        report.notes.extend(notes)
    if out.exists() and (out / "quarantine").exists():
        shutil.rmtree(out / "quarantine")

    for path in disc.orphan_masks:
        report.add("orphan_mask", path.stem, f"{path}: no image with a matching id", [path])
        _quarantine(out, "orphan_mask", [path])
    for reason, rid, detail in disc.metadata_issues:
        report.add(reason, rid, detail)
    meta = disc.metadata
    image_ids = {c.id for c in disc.candidates}
    if meta is not None:
        for rid in meta.index:
            if rid not in image_ids:
                report.add("unknown_metadata_id", rid, "metadata row without an image")

    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    t0 = time.time()
    for i, cand in enumerate(candidates, 1):
        files = [p for p in (cand.image_path, cand.mask_path) if p is not None]
        if cand.id in seen:
            report.add("duplicate_id", cand.id, f"{cand.image_path} repeats {seen[cand.id]}", files)
            _quarantine(out, "duplicate_id", files)
            continue
        seen[cand.id] = cand.image_path
        try:
            pair = load_pair(cand.image_path, cand.mask_path, size, allow_empty_masks)
        except RecordDefect as defect:
            report.add(defect.reason, cand.id, defect.detail, files)
            _quarantine(out, defect.reason, files)
            continue
        if pair.mask_binarised:
            report.add("non_binary_mask", cand.id, f"{cand.mask_path}: grey levels binarised >127")
        row: dict[str, Any] = {
            "id": cand.id, "image": pair.image.tobytes(), "mask": pair.mask.tobytes(),
            "height": size, "width": size,
            "orig_height": pair.orig_height, "orig_width": pair.orig_width,
            "area_fraction": pair.area_fraction, "contrast": pair.contrast,
            "source": layout.name, "mask_binarised": pair.mask_binarised,
            "planted_hard": None, "hard_reason": None,
            "orig_mask": None if pair.orig_mask is None else encode_mask_png(pair.orig_mask),
        }
        if meta is not None:
            if cand.id in meta.index:
                m = meta.loc[cand.id]
                for key in ("age", "sex", "site", "diagnosis", "lesion_id"):
                    row[key] = _meta_value(m.get(key))
            else:
                report.add("no_metadata", cand.id, "no metadata row for this image")
        rows.append(row)
        if i % 250 == 0:
            logger.info(f"  ... {i}/{len(candidates)} images read "
                        f"({time.time() - t0:.0f}s)")

    report.metadata_summary = metadata_summary(rows, disc.stats)
    params = {"layout": layout.name, "size": size, "fractions": list(fractions), "seed": seed,
              "allow_empty_masks": allow_empty_masks}
    if selections:            # only then: an unselected ingest keeps the fingerprint it had
        params["selections"] = sorted(str(sel) for sel in selections)   # order: no matter
    manifest = finalize_dataset(rows, out, report, params=params, fractions=fractions,
                                seed=seed)
    return {"manifest": manifest, "report": report}
