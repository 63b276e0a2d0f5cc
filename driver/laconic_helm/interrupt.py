"""Runs the driver's main coroutine so that SIGINT and SIGTERM become a clean stop.

A signal cancels the main task; cancellation reaches every running child through `proc.run`,
which asks it to stop (helm then records `failed`, never pending) before the task unwinds.

Outside the work (while the command line is read, and while the report is written) `hold()`
makes the two signals be remembered instead of acted on: one that came before the work stops
the run before it touches anything (exit 3), one that came after leaves the outcome as it was,
so a signal never turns into a traceback, click's `Aborted!` or a half-written report. Once the
outcome is reported, `settle()` blocks them until the process has exited.
"""

from __future__ import annotations

import contextlib
import signal
from typing import TYPE_CHECKING, Any, TypeVar

from laconic_helm.errors import Interrupted

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator
    from types import FrameType

# asyncio is imported only by `run`: `hold()` comes first thing at start-up, before the slow
# imports, so that a signal is caught from as early as possible.

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_held: list[str] = []  # signals that came while held, oldest first
_original: dict[signal.Signals, Any] = {}  # the handlers `hold` replaced


def _remember(signum: int, frame: FrameType | None) -> None:
    _held.append(signal.Signals(signum).name)


@contextlib.contextmanager
def lifetime() -> Iterator[None]:
    """The process's signal lifecycle, owned by the entry point: held from start-up, acted on
    only while the work runs (`run`), blocked once the outcome is reported (`settle`)."""
    hold()
    try:
        yield
    finally:
        settle()


def hold() -> bool:
    """From now until `release()`, SIGINT and SIGTERM are remembered, not acted on.

    Returns False when they were held already (the process holds them from start-up to exit).
    """
    if _original:
        return False
    _original.update({sig: signal.getsignal(sig) for sig in SIGNALS})
    for sig in SIGNALS:
        signal.signal(sig, _remember)
    return True


def settle() -> None:
    """Blocks SIGINT and SIGTERM for the rest of the process, once its outcome is reported.

    The interpreter's shutdown puts the default handlers back before the process ends; a
    signal then would turn a finished run's exit code into death by that signal. Blocked, it
    stays pending and goes with the process.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def release() -> None:
    """Gives SIGINT and SIGTERM back the handlers they had before `hold()`."""
    for sig, handler in _original.items():
        signal.signal(sig, handler)
    _original.clear()
    _held.clear()


async def _main(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    loop = asyncio.get_running_loop()
    received: list[str] = []

    # Plain handlers, swapped in and out in one step each. asyncio's own (add_signal_handler)
    # put Python's default handler back when removed, and a signal in that moment, as the work
    # ends, killed the run with a KeyboardInterrupt instead of leaving its outcome.
    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        if len(received) == 1:  # a second signal must not cut the children's clean stop short
            loop.call_soon_threadsafe(task.cancel)

    task = asyncio.ensure_future(coro)
    before = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        if _held:  # it came while the command line was read: the work never starts
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Interrupted(
                f"stopped by {_held[0]} before it began; nothing was changed; re-run to continue"
            )
        return await task
    except asyncio.CancelledError:
        if received:
            raise Interrupted(f"stopped by {received[0]}; re-run to continue") from None
        raise
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)  # e.g. held again while the report is written


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` to completion; a signal turns into `Interrupted` after children stopped."""
    import asyncio

    return asyncio.run(_main(coro))
