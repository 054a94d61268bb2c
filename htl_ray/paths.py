"""Output folders a user names (`--out`, a run's storage path): checked before any work, so
a typo or a read-only location fails in a second, naming the option, not after hours of
reading images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from htl_ray.errors import UserError


def check_writable_dir(path: str | Path, key: str) -> Path:
    """`path` is, or can become, a folder this process can write in; returns it. Probed by
    writing a file (permission bits do not tell for root, read-only mounts or full disks)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key} {path}: exists and is not a folder")
    probe_in = path
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UserError(f"{key} {path}: {probe_in} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=probe_in, prefix=".htl-ray-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"{key} {path}: cannot write in {probe_in} ({exc.strerror or exc})") \
            from None
    return path
