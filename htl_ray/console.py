"""Where htl-ray's progress lines go.

Every module logs through its own `logging.getLogger(__name__)` (all under ``htl_ray``) instead
of receiving a ``log=print`` callable; `show_progress` — called once by the command line, the
demo and the test suite — prints those lines plain to the *current* ``sys.stdout``, so that a
redirected or captured stdout (pytest's ``capsys``, a notebook) receives them too. A library
user who configures ``logging`` themselves gets them through their own handlers instead.
"""

from __future__ import annotations

import logging
import sys

ROOT = "htl_ray"


class _CurrentStdout(logging.Handler):
    """Writes each message to whatever ``sys.stdout`` is at the time of the call."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def show_progress(level: int = logging.INFO) -> None:
    """Print htl-ray's progress lines (INFO and above) on stdout, once per process."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStdout) for h in root.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False      # not twice when the application also logs to the console
