"""One run per deployment at a time: an advisory lock the kernel drops when the holder dies."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

from laconic_helm import paths
from laconic_helm.errors import LockHeld

_POLL = 0.2


def _open(path: Path) -> int:
    """Opens the lock file, making it if missing. In the host-wide folder (sticky, open to all)
    a new file is made readable and writable by all, so any user can lock it; an existing one is
    opened without O_CREAT, which fs.protected_regular refuses on another user's file there."""
    while True:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDWR)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # made by another run since the first open
        if path.parent.stat().st_mode & stat.S_IWOTH:
            os.fchmod(fd, 0o666)
        return fd


@contextlib.asynccontextmanager
async def deployment_lock(name: str, *, wait: float) -> AsyncIterator[None]:
    """Holds the lock of deployment `name`, waiting up to `wait` seconds for another run.

    flock, not a pid file: a SIGKILLed holder releases it at once, so no stale lock survives.
    """
    path = paths.lock_dir() / f"{name}.lock"
    fd = _open(path)
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
