"""SIGTERM handled like Ctrl-C, so `ray job stop`, `kill` or a scheduler's preemption ends a
run through the same path as an interrupt: the MLflow run is marked FAILED (a sweep's parent
KILLED) and everything already written stays, instead of the process vanishing with its run
still RUNNING. Ray's core worker installs its own fatal-signal handler for SIGTERM when it
connects (it logs and aborts), so the handler is installed again after `ray.init`."""

from __future__ import annotations

import signal
import threading

_installed = False


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def handle_sigterm_as_interrupt() -> None:
    """Install the handler (main thread only; elsewhere signals cannot be handled)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
        _installed = True


def reinstall_after_ray_init() -> None:
    """Take SIGTERM back from Ray if this process had asked for the handler."""
    if _installed:
        handle_sigterm_as_interrupt()
