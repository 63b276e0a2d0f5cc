"""Waits and time budgets that hold on a loaded machine.

The suite shares its cores with other work (load average 15-20 on 2 cores has been seen), and
then everything takes several times as long as on a quiet machine. So:

- a wait for something to become ready polls with a generous ceiling (`wait_until`): the
  ceiling only matters when the thing never comes, so it costs nothing to make it large, and
  the failure names what was awaited;
- a budget a test asserts (a `--deadline` that must fire at a given point) is derived from a
  run of the same kind timed just before (`timed`), never a constant tuned on a quiet
  machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Ceilings for readiness waits: many times what a quiet machine takes, since only a wait that
# fails ever uses them up.
CEILING = 300.0


class NotReached(RuntimeError):
    """A polled condition did not hold within its ceiling."""


def wait_until(
    check: Callable[[], T],
    what: str,
    ceiling: float = CEILING,
    interval: float = 0.2,
    why: Callable[[], str] | None = None,
) -> T:
    """Polls `check` until it returns something truthy and returns that. After `ceiling`
    seconds raises NotReached naming `what` (and `why()`, evaluated then, e.g. which process
    died or where its logs are)."""
    started = time.monotonic()
    while not (result := check()):
        waited = time.monotonic() - started
        if waited > ceiling:
            detail = f"; {why()}" if why is not None else ""
            raise NotReached(f"timed out after {waited:.0f} s waiting for {what}{detail}")
        time.sleep(interval)
    return result


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """`work()` and the seconds it took: the baseline a budget is scaled from."""
    started = time.monotonic()
    result = work()
    return result, time.monotonic() - started
