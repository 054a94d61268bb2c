"""Where htl-ray's progress lines go.

Every module logs through its own `logging.getLogger(__name__)` (all under ``htl_ray``) instead
of receiving a ``log=print`` callable; `show_progress` — called once by the command line (the
demo included), the test suite, Ray Train workers, the refresh coordinator and sweep trials —
prints those lines plain to the *current* ``sys.stdout``, so that a
redirected or captured stdout (pytest's ``capsys``, a notebook) receives them too. A library
user who configures ``logging`` themselves gets them through their own handlers instead.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOT = "htl_ray"


class _CurrentStdout(logging.Handler):
    """Writes each message to `stream`, or to whatever ``sys.stdout`` is at the time."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self.stream or sys.stdout
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def show_progress(level: int = logging.INFO, *, stream: TextIO | None = None,
                  prefix: str = "") -> None:
    """Print htl-ray's progress lines (INFO and above) on stdout, once per process.

    `stream`: always this one instead. A Ray Train worker passes ``sys.__stdout__``: Ray Train
    patches `print` in workers to log *and*, when MLflow has wrapped sys.stdout, to print as
    well — every line twice; the process's own stdout bypasses the patch (Ray still forwards
    it to the driver's console). `prefix` starts every line (a sweep trial's name, so that
    the lines of trials running side by side can be told apart); called again, the newest
    stream and prefix apply."""
    root = logging.getLogger(ROOT)
    handler = next((h for h in root.handlers if isinstance(h, _CurrentStdout)), None)
    if handler is None:
        handler = _CurrentStdout(stream)
        root.addHandler(handler)
    handler.stream = stream
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    root.setLevel(level)
    root.propagate = False      # not twice when the application also logs to the console
