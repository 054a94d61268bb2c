"""htl_ray.interrupts: SIGTERM raised as KeyboardInterrupt once asked for (main thread only),
and taken back after another handler (Ray's) replaced it — and only if it was asked for."""

from __future__ import annotations

import signal
import threading

import pytest

from htl_ray import interrupts


@pytest.fixture(autouse=True)
def restore_sigterm(monkeypatch):
    """Each test starts with the handler not installed; the process's SIGTERM handler is put
    back after it."""
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(interrupts, "_installed", False)
    yield
    signal.signal(signal.SIGTERM, before)


def _other_handler(signum, frame):           # stands for the handler Ray's core worker sets
    raise AssertionError("the other handler ran")


def test_sigterm_becomes_a_keyboard_interrupt():
    interrupts.handle_sigterm_as_interrupt()
    assert signal.getsignal(signal.SIGTERM) is interrupts._terminated
    with pytest.raises(KeyboardInterrupt, match=f"^signal {int(signal.SIGTERM)}$"):
        signal.raise_signal(signal.SIGTERM)


def test_the_handler_is_taken_back_after_another_replaced_it():
    interrupts.handle_sigterm_as_interrupt()
    signal.signal(signal.SIGTERM, _other_handler)           # ray.init
    interrupts.reinstall_after_ray_init()
    assert signal.getsignal(signal.SIGTERM) is interrupts._terminated
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)


def test_a_process_that_did_not_ask_keeps_its_handler():
    signal.signal(signal.SIGTERM, _other_handler)
    interrupts.reinstall_after_ray_init()
    assert signal.getsignal(signal.SIGTERM) is _other_handler


def test_outside_the_main_thread_nothing_is_installed():
    signal.signal(signal.SIGTERM, _other_handler)
    errors = []

    def install():
        try:
            interrupts.handle_sigterm_as_interrupt()
        except Exception as exc:                       # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) is _other_handler
    assert interrupts._installed is False
    interrupts.reinstall_after_ray_init()                   # so nothing to take back either
    assert signal.getsignal(signal.SIGTERM) is _other_handler


def test_ctrl_c_while_training_aborts_first_then_interrupts_and_python_gets_it_back():
    """Ray Train's SIGINT handler ends the process with sys.exit; ours aborts the same way,
    then raises KeyboardInterrupt — also when the abort fails (the run ended already)."""
    before = signal.getsignal(signal.SIGINT)
    calls = []
    try:
        signal.signal(signal.SIGINT, interrupts.interrupt_after(lambda: calls.append("abort")))
        with pytest.raises(KeyboardInterrupt, match="signal 2"):
            signal.raise_signal(signal.SIGINT)
        assert calls == ["abort"]

        def gone():
            raise RuntimeError("the controller actor died")

        signal.signal(signal.SIGINT, interrupts.interrupt_after(gone))
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        interrupts.restore_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
