"""Every file under a source folder, so that ingestion can say what became of each one: used,
quarantined, or ignored with the reason. A layout reads only the files it knows; without this
walk a file in the wrong place or format would vanish from the dataset without a word."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from htl_ray.data.images import READ_SUFFIXES, UNREAD_SUFFIXES

# reason → what it means
IGNORED: dict[str, str] = {
    "not_read_by_layout": "a file the layout does not read (not an image or table of it, or "
                          "in a folder it does not look in)",
    "superpixels": "an ISIC superpixel map, not a lesion image",
    "hidden": "a hidden or system file (.DS_Store, Thumbs.db, ._*)",
    "link_loop": "a symbolic link back into a folder that contains it, or a cycle of links: "
                 "not followed",
    "second_path": "a symbolic link to a folder already listed under another path",
    "broken_link": "a symbolic link whose target does not exist",
    "unreadable": "a file or folder this process cannot read",
}
SYSTEM_FILES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r"})


def ignored_files(src: Path, accounted: Iterable[Path], *,
                  skip: Iterable[Path] = ()) -> list[dict[str, str]]:
    """Files under `src` that ingestion did not use or quarantine: [{"file", "reason",
    "detail"}] in walk order. Real folders are walked first, then the folders symbolic links
    lead to (once each: a link to a folder already listed, or to one that contains it, is
    named, not followed). Folders in `skip` (the output folder) are not walked."""
    seen = {k for k in map(_key, accounted) if k is not None}
    skipped = {k for k in map(_key, skip) if k is not None}
    out: list[dict[str, str]] = []
    listed: set[tuple[int, int]] = set()
    links: list[Path] = []

    def add(path: Path, reason: str, detail: str = "") -> None:
        out.append({"file": str(path), "reason": reason, "detail": detail or IGNORED[reason]})

    def walk(folder: Path) -> None:
        key = _key(folder)
        listed.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            add(folder, "unreadable", f"folder cannot be listed: {exc.strerror or exc}")
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                st = os.stat(path)                     # follows links
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    add(path, "link_loop", "a cycle of symbolic links")
                elif entry.is_symlink():
                    add(path, "broken_link",
                        f"link to {os.readlink(path)}, which does not exist")
                else:
                    add(path, "unreadable", f"{exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in skipped:
                    continue
                if entry.is_symlink():
                    links.append(path)                 # after every real folder
                else:
                    walk(path)
                continue
            if (st.st_dev, st.st_ino) in seen:
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
    while links:
        link = links.pop(0)
        target = link.resolve()
        if target == link.parent.resolve() or target in link.parent.resolve().parents:
            add(link, "link_loop", f"leads back to {target}, which contains it")
        elif _key(target) in listed:
            add(link, "second_path", f"leads to {target}, already listed")
        else:
            walk(link)
    return out


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
