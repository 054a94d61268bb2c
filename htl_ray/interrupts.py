"""SIGTERM handled like Ctrl-C, so `ray job stop`, `kill` or a scheduler's preemption ends a
run through the same path as an interrupt: the MLflow run is marked FAILED (a sweep's parent
KILLED) and everything already written stays, instead of the process vanishing with its run
still RUNNING. Ray's core worker installs its own fatal-signal handler for SIGTERM when it
connects (it logs and aborts), so the handler is installed again after `ray.init`.

Ctrl-C itself needs the same care while a training run goes: Ray Train's `fit` installs a
SIGINT handler that aborts the run and then ends the process with `sys.exit` — exit status 1,
not a word, the command line's own ending skipped. `interrupt_after` aborts the same way and
then raises KeyboardInterrupt, and `restore_ctrl_c` puts Python's own handler back after it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

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


def interrupt_after(abort: Callable[[], object]) -> Callable[[int, object], None]:
    """A signal handler that calls `abort` (stop what runs elsewhere, e.g. Ray Train's
    controller; an error there means it has ended already) and then raises KeyboardInterrupt
    here, so that the interrupt takes the command line's own path (exit 130)."""
    def handler(signum, frame) -> None:
        try:
            abort()
        except Exception:  # noqa: BLE001 - ended already: the interrupt is what matters
            pass
        raise KeyboardInterrupt(f"signal {signum}")
    return handler


def restore_ctrl_c() -> None:
    """Python's own Ctrl-C handler back (main thread only), after a library replaced it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
