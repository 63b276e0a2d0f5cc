"""Running coroutines at once, so that a failure of one stops the others."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine


async def together(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs `work` at once and returns the results in order. The first error cancels the rest
    before it is raised, bare (gather would leave them to asyncio.run's shutdown, where a
    cancelled read could wait for ever, and a TaskGroup raises an ExceptionGroup that the
    error hierarchy does not know)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]
