"""Which of a folder's images an ingest takes, by their metadata (`--keep` / `--drop`).

Holding one collection out as an external test set — the ISIC archive's MSK-4 images (lesion ids
`MSK4_…`), one hospital's patients, one device — is two ingests of the same folder: one that
drops it and one that keeps only it (`--all-test`). A selection is a metadata key and a shell
pattern (`fnmatch`, case-sensitive) on the value as ingestion reads it — ids and lesion ids as
written, `sex` lower-cased, `age` a whole number of years: `lesion_id=MSK4_*`, `site=head*`,
`sex=female`, `age=8?`. An image is ingested when it matches every `--keep` and no `--drop`;
an image whose value is unknown matches no pattern. Nothing is left out silently: the report
says how many images each selection left out, the manifest records the selections (so the
fingerprint tells the two datasets apart), and a selection that matches no image at all is
refused as the typo it most likely is.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from htl_ray.data.layouts import META_FIELDS
from htl_ray.errors import UserError

SELECTABLE = ("id", *META_FIELDS)     # what a selection may name: the schema's metadata keys


@dataclass(frozen=True)
class Selection:
    """`--keep KEY=PATTERN` (`keep`) or `--drop KEY=PATTERN`."""

    key: str
    pattern: str
    keep: bool

    def __str__(self) -> str:
        return f"--{'keep' if self.keep else 'drop'} {self.key}={self.pattern}"

    def matches(self, value: Any) -> bool:
        text = metadata_text(value)
        return text is not None and fnmatchcase(text, self.pattern)


def parse_selection(text: str, *, keep: bool) -> Selection:
    """`KEY=PATTERN` as a Selection; a UserError naming the option and what it expects."""
    option = "--keep" if keep else "--drop"
    key, sep, pattern = text.partition("=")
    key = key.strip()
    if not sep or not pattern:
        raise UserError(f"{option} {text!r}: expected KEY=PATTERN, e.g. lesion_id=MSK4_*")
    if key not in SELECTABLE:
        close = difflib.get_close_matches(key, SELECTABLE, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{option} {text!r}: unknown key {key!r}{hint}; expected one of "
                        f"{', '.join(SELECTABLE)}")
    return Selection(key, pattern, keep)


def metadata_text(value: Any) -> str | None:
    """A metadata value as a pattern reads it: None when unknown, 45.0 → '45'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def select(ids: Sequence[str], metadata: Mapping[str, Mapping[str, Any]],
           selections: Iterable[Selection]) -> tuple[set[str], list[str]]:
    """The ids of `ids` that every selection lets through (`metadata`: id → its values; an id
    without a row has every value unknown), and one line per selection saying how many images it
    left out. A selection that no image matches is refused."""
    selections = list(selections)
    kept, notes = set(ids), []
    for sel in selections:
        def value(i: str, key: str = sel.key) -> Any:
            return i if key == "id" else metadata.get(i, {}).get(key)

        matched = {i for i in ids if sel.matches(value(i))}
        if not matched:
            seen = sorted({t for i in ids if (t := metadata_text(value(i))) is not None})
            shown = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
            raise UserError(f"{sel}: no image's {sel.key} matches {sel.pattern!r} "
                            f"({'values seen: ' + shown if seen else 'no image has one'})")
        out = kept - matched if sel.keep else kept & matched
        kept -= out
        notes.append(f"{sel}: {len(out)} of {len(ids)} images left out (not ingested)")
    if selections and not kept:
        raise UserError(f"{' '.join(map(str, selections))}: together they leave no image to "
                        "ingest")
    return kept, notes
