"""Every file under a source folder, so that ingestion can say what became of each one: used,
quarantined, or ignored with the reason. A layout reads only the files it knows; without this
walk a file in the wrong place or format would vanish from the dataset without a word."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from htl_ray.data.images import READ_SUFFIXES, UNREAD_SUFFIXES

# reason → what it means
IGNORED: dict[str, str] = {
    "not_read_by_layout": "a file the layout does not read (not an image or table of it, or "
                          "in a folder it does not look in)",
    "superpixels": "an ISIC superpixel map, not a lesion image",
    "hidden": "a hidden or system file (.DS_Store, Thumbs.db, ._*)",
    "link_loop": "a symbolic link back into a folder already listed (a loop): not followed",
    "broken_link": "a symbolic link whose target does not exist",
}
SYSTEM_FILES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r"})


def ignored_files(src: Path, accounted: Iterable[Path]) -> list[dict[str, str]]:
    """Files under `src` (symbolic links followed once, loops detected) that ingestion did not
    use or quarantine: [{"file", "reason", "detail"}], sorted by file."""
    seen = {_key(p) for p in accounted if p.exists()}
    out: list[dict[str, str]] = []
    visited: set[tuple[int, int]] = set()

    def add(path: Path, reason: str, detail: str = "") -> None:
        out.append({"file": str(path), "reason": reason, "detail": detail or IGNORED[reason]})

    def walk(folder: Path) -> None:
        st = folder.stat()
        visited.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            add(folder, "not_read_by_layout", f"folder cannot be listed: {exc.strerror}")
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not path.exists():
                add(path, "broken_link", f"link to {os.readlink(path)}, which does not exist")
                continue
            if entry.is_dir():
                st = path.stat()
                if (st.st_dev, st.st_ino) in visited:
                    add(path, "link_loop", f"leads back to {path.resolve()}, already listed")
                    continue
                walk(path)
                continue
            if _key(path) in seen:
                continue
            name = entry.name
            if name.startswith(".") or name in SYSTEM_FILES:
                add(path, "hidden")
            elif "_superpixels" in path.stem:
                add(path, "superpixels")
            elif path.suffix.lower() in READ_SUFFIXES + UNREAD_SUFFIXES:
                add(path, "not_read_by_layout", "an image in a folder or under a name the "
                    "layout does not read as a record's image or mask")
            else:
                add(path, "not_read_by_layout")

    walk(src)
    return out


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino
