"""interrupt: SIGINT and SIGTERM stop the work cleanly, and never reach Python's defaults."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from laconic_helm import interrupt
from laconic_helm.errors import Interrupted

pytestmark = pytest.mark.unit


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, Any]]]:
    """Signals held as at the CLI's start-up; yields every handler installed meanwhile."""
    installed: list[tuple[int, Any]] = []
    real = signal.signal

    def recording(sig: int, handler: Any) -> Any:
        installed.append((sig, handler))
        return real(sig, handler)

    interrupt.hold()
    monkeypatch.setattr(signal, "signal", recording)
    try:
        yield installed
    finally:
        monkeypatch.undo()
        interrupt.release()


def _defaults(installed: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(s, h) for s, h in installed if h in (signal.SIG_DFL, signal.default_int_handler)]


def test_work_that_ends_leaves_the_signals_held(held: list[tuple[int, Any]]) -> None:
    async def work() -> str:
        await asyncio.sleep(0.01)
        return "done"

    assert interrupt.run(work()) == "done"
    # A signal at any moment of the hand-over, as the work ends, must find a handler of ours:
    # Python's default would end the run with a KeyboardInterrupt (or die of SIGTERM).
    assert _defaults(held) == []
    assert signal.getsignal(signal.SIGINT) is interrupt._remember
    assert signal.getsignal(signal.SIGTERM) is interrupt._remember


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_work_stops_it(held: list[tuple[int, Any]], sig: int) -> None:
    stopped: list[bool] = []

    async def work() -> str:
        os.kill(os.getpid(), sig)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(True)
            raise
        return "not stopped"

    with pytest.raises(Interrupted, match=f"stopped by {signal.Signals(sig).name}"):
        interrupt.run(work())
    assert stopped == [True]
    assert _defaults(held) == []


def test_a_signal_as_the_work_ends_leaves_its_outcome(held: list[tuple[int, Any]]) -> None:
    async def work() -> str:
        os.kill(os.getpid(), signal.SIGINT)  # the work is done; the signal comes with its end
        return "done"

    assert interrupt.run(work()) == "done"
    assert _defaults(held) == []


def test_a_signal_while_the_interpreter_shuts_down_leaves_the_exit_code() -> None:
    # Python's shutdown gives SIGINT its default action back before the process ends; the
    # child does that itself at exit, then signals itself, as a late SIGINT would land.
    late_signal = (
        "import atexit, os, signal, sys\n"
        "atexit.register(lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL),"
        " os.kill(os.getpid(), signal.SIGINT)))\n"
        "sys.argv = ['laconic-helm', '--version']\n"
        "from laconic_helm.__main__ import run\n"
        "run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", late_signal], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("laconic-helm, version")
