"""The one place a process starts.

Every external command goes through `spawn`: argv only (never a shell), in its own session so a
terminal's Ctrl-C reaches the driver alone and the driver decides how to stop its children, with
a parent-death signal so no child outlives a SIGKILLed driver, and with one redacted log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from laconic_helm.errors import CommandError, ToolMissingError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
REDACTED = "***"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def display(argv: Sequence[str], redact: Sequence[str] = ()) -> str:
    """Returns the command line as a shell would show it, with secret arguments masked."""
    return shlex.join(REDACTED if arg in redact else arg for arg in argv)


def _die_with_parent() -> None:
    # SIGTERM, not SIGKILL: helm catches it and records the release `failed` instead of pending.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(
    argv: Sequence[str],
    *,
    stdin: int | None = DEVNULL,
    stdout: int | None = PIPE,
    stderr: int | None = PIPE,
    env: Mapping[str, str] | None = None,
    redact: Sequence[str] = (),
) -> asyncio.subprocess.Process:
    """Starts `argv` in a new session; raises ToolMissingError when the program is absent."""
    log.debug("run: %s", display(argv, redact))
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{argv[0]}: not found on PATH") from exc
    except PermissionError as exc:
        raise ToolMissingError(f"{argv[0]}: not executable") from exc


def signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Sends `sig` to the process's whole group (the child and anything it started)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


async def stop(proc: asyncio.subprocess.Process, *, grace: float = 10.0) -> None:
    """Asks the process to stop (SIGINT, which helm turns into a `failed` record), then kills it."""
    if proc.returncode is not None:
        return
    signal_group(proc, signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        signal_group(proc, signal.SIGKILL)
        await proc.wait()


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    redact: Sequence[str] = (),
    grace: float = 10.0,
) -> Completed:
    """Runs `argv` to completion and captures its output.

    Cancelling the awaiting task stops the process (see `stop`) before the cancellation goes on,
    so a deadline never leaves an orphan working on the cluster.
    """
    proc = await spawn(argv, stdin=PIPE if input is not None else DEVNULL, env=env, redact=redact)
    try:
        out, err = await proc.communicate(input)
    except asyncio.CancelledError:
        await stop(proc, grace=grace)
        raise
    done = Completed(list(argv), int(proc.returncode or 0), out, err)
    if check and done.returncode != 0:
        shown = [REDACTED if a in redact else a for a in argv]
        raise CommandError(shown, done.returncode, (err or out).decode(errors="replace"))
    return done
