"""Runs the driver's main coroutine so that SIGINT and SIGTERM become a clean stop.

A signal cancels the main task; cancellation reaches every running child through `proc.run`,
which asks it to stop (helm then records `failed`, never pending) before the task unwinds.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any, TypeVar

from laconic_helm.errors import Interrupted

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")


async def _main(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Interrupted(f"stopped by {received[0]}; re-run to continue") from None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` to completion; a signal turns into `Interrupted` after children stopped."""
    return asyncio.run(_main(coro))
