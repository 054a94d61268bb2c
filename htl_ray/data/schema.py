"""The one Parquet schema every dataset (ISIC, PH2, folder, synthetic) is written in.

Images and masks are stored pre-decoded as raw uint8 at the training resolution (HxWx3 and
HxW with values 0/1), so training never decodes a JPEG per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from htl_ray.errors import UserError, first_line

SCHEMA_VERSION = 2            # 2: `orig_mask`, the mask at the image's original size
RECORDS_FILE = "records.parquet"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
SPLITS = ("train", "val", "test")

# A dataset folder (`htl-ray data ingest` and `htl-ray data synth` write it at --out):
# relative path → what it holds. The documentation's reference is generated from it.
LAYOUT: dict[str, str] = {
    RECORDS_FILE: "one row per usable image, in `SCHEMA`: the image (raw uint8 HxWx3) "
                  "and mask (uint8 HxW, 0/1) at the training resolution, the mask at the "
                  "image's original size (`orig_mask`, PNG 0/255), original height and width, "
                  "metadata (age, sex, site, diagnosis, lesion_id; missing ones null), lesion "
                  "area fraction and contrast, split, source file, `mask_binarised`, and the "
                  "synthetic data's `planted_hard` / `hard_reason`",
    MANIFEST_FILE: "schema version, the dataset fingerprint (sha256 over pixels, labels, "
                   "metadata, split and the ingest parameters), row and split counts, the "
                   "parameters, creation time",
    REPORT_FILE: "what ingestion found: images seen, usable, quarantined; every defect "
                 "counted and listed by reason (with what the reason means), every file not "
                 "used with why (`ignored`), split counts, metadata completeness",
    "quarantine/<reason>/": "copies of the source files that could not be used, one folder "
                            "per reason (`htl-ray data ingest` only)",
}

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.binary()),
    ("mask", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("orig_height", pa.int32()),
    ("orig_width", pa.int32()),
    ("age", pa.float64()),
    ("sex", pa.string()),
    ("site", pa.string()),
    ("diagnosis", pa.string()),
    ("lesion_id", pa.string()),
    ("area_fraction", pa.float64()),
    ("contrast", pa.float64()),
    ("split", pa.string()),
    ("source", pa.string()),
    ("mask_binarised", pa.bool_()),
    ("planted_hard", pa.bool_()),
    ("hard_reason", pa.string()),
    # the ground truth at the image's original size, PNG (0/255): what the ISIC challenge
    # scores against (`evaluate` at original resolution); null when the original is the
    # stored size (synthetic data) or the dataset predates schema 2
    ("orig_mask", pa.binary()),
])
METADATA_COLUMNS = ("age", "sex", "site", "diagnosis", "lesion_id")
TABLE_COLUMNS = [f.name for f in SCHEMA if f.name not in ("image", "mask", "orig_mask")]


def decode_image(buf: bytes, height: int, width: int) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)


def decode_mask(buf: bytes, height: int, width: int) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8).reshape(height, width)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean / 0-1 mask as a 0/255 greyscale PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, "L").save(buf, format="PNG")
    return buf.getvalue()


def decode_mask_png(buf: bytes) -> np.ndarray:
    """`encode_mask_png`'s bytes → bool mask."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(buf))) > 127


def has_column(dataset_dir: str | Path, column: str) -> bool:
    return column in pq.read_schema(Path(dataset_dir) / RECORDS_FILE).names


def write_records(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    path = out_dir / RECORDS_FILE
    pq.write_table(table, path, compression="zstd", row_group_size=128)
    return path


def read_table(dataset_dir: str | Path, columns: list[str] | None = None,
               split: str | None = None):
    """Metadata (and optionally pixels) as a pandas DataFrame, for analysis and tests."""
    path = Path(dataset_dir) / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset here; create one with `htl-ray data ingest` "
                                "or `htl-ray data synth`")
    return read_split_table(path, columns or TABLE_COLUMNS, split).to_pandas()


def read_split_table(path: str | Path, columns: list[str], split: str | None = None):
    """`columns` of a records file as a pyarrow Table, in file order; the split filter is
    pushed into the read."""
    filters = [("split", "==", split)] if split else None
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable records file ({first_line(exc)}); "
                        "ingest the dataset again") from None


def check_records(dataset_dir: str | Path, key: str) -> dict[str, Any]:
    """A dataset folder whose manifest and records file can be read (the Parquet footer, not
    the pixels): its manifest. A copy cut short fails here, naming `key`, not in a worker."""
    path = Path(dataset_dir) / RECORDS_FILE
    try:
        manifest = read_manifest(dataset_dir)
        pq.read_schema(path)
    except FileNotFoundError as exc:
        raise UserError(f"{key}: {exc}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{key}: {path} is not a readable Parquet file "
                        f"({first_line(exc)}); ingest the dataset again") from None
    return manifest


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing dataset manifest")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not readable as JSON ({exc}); ingest the dataset again") \
            from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a dataset manifest; ingest the dataset again")
    return manifest
