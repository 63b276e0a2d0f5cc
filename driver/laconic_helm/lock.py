"""One run per deployment at a time: an advisory lock the kernel drops when the holder dies."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator

from laconic_helm import paths
from laconic_helm.errors import LockHeld

_POLL = 0.2


@contextlib.asynccontextmanager
async def deployment_lock(name: str, *, wait: float) -> AsyncIterator[None]:
    """Holds the lock of deployment `name`, waiting up to `wait` seconds for another run.

    flock, not a pid file: a SIGKILLed holder releases it at once, so no stale lock survives.
    """
    path = paths.state_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise LockHeld(
                        f"deployment {name}: another laconic-helm run (pid {holder}) holds "
                        f"the lock {path}; waited {wait:.0f} s",
                        hint="re-run when it has finished",
                    ) from None
                await asyncio.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock
