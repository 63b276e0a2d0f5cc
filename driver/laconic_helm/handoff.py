"""A kind node's short way in for a stream: a FIFO in a host folder the node mounts.

Bytes written to `docker exec -i`'s stdin cross the docker CLI, the daemon and the container's
shim before `ctr` reads them, a copy in user space at each, on the cores `docker save` and the
import need (a first load of one 1 GiB layer: 1.19x kind's own way through exec, 0.98-1.02x
through the FIFO; benchmarks/README.md). Every node the driver creates mounts its cluster's
transfer folder, read-only, at IN_NODE; `ctr import` is given the path of a FIFO made there,
and this process writes the FIFO. A node without the mount (a cluster made by an older
version, or by someone else), or one whose `ctr` cannot open the FIFO (the folder was made
again after the node mounted it; a daemon on another machine), is streamed to through exec's
stdin as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from laconic_helm import docker, proc
from laconic_helm.archive import enlarge_pipe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

IN_NODE = "/opt/laconic-helm/transfer"  # where every node the driver creates mounts the folder
FOLDER_NAME = "transfer"  # the host folder's name, in the cluster's state folder
OPEN_CEILING = 60.0  # seconds for the node's reader to open the FIFO (exec start-up, loaded)
_POLL = 0.02
_SUFFIX = ".fifo"


async def mounted_folder(node: str) -> Path | None:
    """The host folder `node` mounts at IN_NODE, when this process can make a FIFO in it."""
    done = await docker.run("inspect", "--format", "{{json .Mounts}}", node, check=False)
    if done.returncode != 0:
        return None
    try:
        mounts = json.loads(done.text) or []
    except ValueError:
        return None
    for mount in mounts:
        if mount.get("Type") == "bind" and mount.get("Destination") == IN_NODE:
            folder = Path(mount.get("Source") or "/nonexistent")
            if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                return folder
    return None


def sweep(folder: Path) -> None:
    """Removes FIFOs that killed runs left (named by their process ID, which is gone)."""
    for path in folder.glob(f"*{_SUFFIX}"):
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def open_fifo(
    folder: Path, node: str, start: Callable[[str], Awaitable[asyncio.subprocess.Process]]
) -> tuple[asyncio.subprocess.Process, int] | None:
    """Makes a FIFO in `folder` and starts its reader with `start(path in the node)`.

    Returns the reader and the FIFO's write end (non-blocking) once the reader has opened it;
    the FIFO's name is gone by then, so nothing is left behind. Returns None, the reader
    stopped, when it exits first or has not opened it within OPEN_CEILING.
    """
    sweep(folder)
    name = f"{os.getpid()}-{os.urandom(6).hex()}{_SUFFIX}"
    path = folder / name
    os.mkfifo(path, 0o600)
    try:
        reader = await start(f"{IN_NODE}/{name}")
        fd = await _open_writer(path, reader)
        if fd is None:
            await proc.stop(reader, grace=2)
            said = await reader.stdout.read() if reader.stdout is not None else b""
            log.info(
                "node %s does not read the transfer folder (%s): streaming through exec",
                node,
                said.decode(errors="replace").strip()[-200:] or "no FIFO opened in time",
            )
            return None
        return reader, fd
    finally:
        path.unlink(missing_ok=True)


async def _open_writer(path: Path, reader: asyncio.subprocess.Process) -> int | None:
    """The write end of FIFO `path`, once `reader` has opened the other end; None when it
    exits or the ceiling passes first. (A non-blocking open for writing fails with ENXIO until
    a reader holds the FIFO open.)"""
    deadline = time.monotonic() + OPEN_CEILING
    while time.monotonic() < deadline and reader.returncode is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        else:
            enlarge_pipe(fd)
            return fd
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.wait(), _POLL)
    return None
