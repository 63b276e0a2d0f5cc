"""Interrupting a driver run at a named point, found from the outside.

Nothing in the driver knows it is being tested: a point is recognised by what an operator could
see too. The driver's step lines on stderr mark the step boundaries; its child processes (read
from /proc) mark `kind create`, `docker save`, each `ctr import` and each helm command; the bytes
an importer has read (/proc/<pid>/io, of `ctr` in the node for a FIFO) mark how far an image
stream has got; the cluster's API (release records, objects) and docker (node containers) mark
the rest. When the trigger holds, the signal goes to the driver (SIGINT, SIGTERM, SIGKILL) or
to its helm child alone (SIGKILL), exactly as Ctrl-C, ansible's timeout, the OOM killer or a
crash would deliver it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laconic_helm import handoff
from tests.harness.client import Client

SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL", "SIGKILL-helm")
_POLL = 0.02  # seconds between trigger checks


@dataclass(frozen=True)
class Child:
    """A direct child process of the driver."""

    pid: int
    argv: tuple[str, ...]

    def has(self, *words: str) -> bool:
        """True when every word is one of its arguments (the program counts by its base name)."""
        args = {Path(self.argv[0]).name, *self.argv} if self.argv else set()
        return all(w in args for w in words)

    def bytes_read(self) -> int:
        """Bytes the process has read so far (its stdin pipe included), 0 once it is gone."""
        try:
            for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "rchar":
                    return int(value)
        except OSError:
            pass
        return 0

    @property
    def is_helm(self) -> bool:
        return bool(self.argv) and "helm" in Path(self.argv[0]).name


def children_of(pid: int) -> list[Child]:
    """The live direct children of `pid` (zombies left out), from its threads' children lists:
    cheap enough to poll every few milliseconds even on a loaded machine, where a scan of all
    of /proc could take longer than a short helm command lives."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    pids: set[int] = set()
    for task in tasks:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    found = []
    for child in sorted(pids):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
            if stat[stat.rindex(")") + 2 :].split()[0] == "Z":
                continue
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        found.append(Child(child, tuple(a.decode(errors="replace") for a in argv if a)))
    return found


class DriverRun:
    """The driver CLI running in the background: its stderr lines as they come, its children,
    and its JSON report once it has ended."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._stdout = ""
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[Child]:
        return children_of(self.pid) if self.alive() else []

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def report(self) -> dict[str, Any]:
        try:
            return json.loads(self._stdout) if self._stdout.strip() else {}
        except ValueError:
            return {"unparsed": self._stdout}


@dataclass
class Probe:
    """What a trigger may look at: the run, and the cluster's API once it answers."""

    run: DriverRun
    api: Callable[[], Client | None]
    memory: dict[str, Any] = field(default_factory=dict)


Trigger = Callable[[Probe], bool]


class Missed(AssertionError):
    """The run ended (or the time ran out) before its injection point was reached."""


@dataclass(frozen=True)
class Fired:
    """Where a signal landed: the seconds into the run and the last step line before it."""

    signal: str
    seconds: float
    last_line: str
    target: int  # pid signalled


def inject(run: DriverRun, probe: Probe, trigger: Trigger, how: str, timeout: float) -> Fired:
    """Waits until `trigger` holds, then delivers `how` (one of SIGNALS)."""
    deadline = time.monotonic() + timeout
    while True:
        if not run.alive():
            run.wait(10)
            raise Missed(
                f"the run ended (exit {run.process.returncode}) before the point: "
                f"{run.report.get('error')}\n{run.stderr}"
            )
        if trigger(probe):
            break
        if time.monotonic() > deadline:
            raise Missed(f"the point was not reached within {timeout:.0f} s")
        time.sleep(_POLL)
    if how == "SIGKILL-helm":
        helm = [c for c in run.children() if c.is_helm]
        if not helm:
            raise Missed("no helm process was running at the point")
        target = helm[0].pid
        os.kill(target, signal.SIGKILL)
    else:
        target = run.pid
        os.kill(target, signal.Signals[how])
    last = run.lines[-1] if run.lines else ""
    return Fired(how, round(time.monotonic() - run.started, 2), last, target)


def interrupt(
    argv: Sequence[str],
    env: dict[str, str],
    api: Callable[[], Client | None],
    trigger: Trigger,
    how: str,
    *,
    reach: float,
    stop: float,
) -> tuple[DriverRun, int, Fired]:
    """Runs the driver, delivers `how` once `trigger` holds (within `reach` seconds) and waits
    up to `stop` seconds for the run to end; a run still alive after that is killed."""
    run = DriverRun(argv, env)
    try:
        fired = inject(run, Probe(run, api), trigger, how, reach)
        code = run.wait(stop)
    finally:
        if run.alive():
            run.process.kill()
            run.wait(30)
    return run, code, fired


def expect_documented_exit(how: str, run: DriverRun, code: int, where: str) -> None:
    """The interrupted run's exit is the one README documents for `how` (exit 3 for SIGINT and
    SIGTERM with the signal named, death by SIGKILL, exit 1 naming the release when helm alone
    was killed), with no traceback."""
    report = run.report
    assert "Traceback" not in run.stderr, where
    if how == "SIGKILL":
        assert code == -signal.SIGKILL, where
    elif how == "SIGKILL-helm":
        assert code == 1 and report.get("error", "").startswith("release "), where
    else:
        assert code == 3 and report["exit_code"] == 3, where
        assert f"stopped by {how}" in report["error"], where
        assert "re-run to continue" in report["error"], where


# --- triggers -------------------------------------------------------------------------------


def at_once() -> Trigger:
    """As soon as the process exists (before the driver has installed anything)."""
    return lambda probe: True


def after_line(prefix: str) -> Trigger:
    """Once a step line starting with `prefix` is on stderr (the step has just ended)."""
    return lambda probe: any(line.startswith(prefix) for line in probe.run.lines)


def child(*words: str) -> Trigger:
    """While a child process with all of `words` among its arguments runs."""
    return lambda probe: any(c.has(*words) for c in probe.run.children())


def child_ended(*words: str, before_line: str) -> Trigger:
    """Once a child with `words` has been seen and has ended, before the step line
    `before_line` appears (the driver is finishing that step)."""

    def check(probe: Probe) -> bool:
        running = any(c.has(*words) for c in probe.run.children())
        if running:
            probe.memory["seen"] = True
            return False
        done = any(line.startswith(before_line) for line in probe.run.lines)
        return bool(probe.memory.get("seen")) and not done

    return check


def streamed(fraction: float, total: int) -> Trigger:
    """Once a node's `ctr import` has read `fraction` of the `total` image bytes: the driver's
    `docker exec -i` child reads them from its stdin pipe; a stream handed over through a FIFO
    in the node's transfer folder (laconic_helm.handoff) is read by `ctr` in the node itself."""

    def check(probe: Probe) -> bool:
        readers = []
        for child in probe.run.children():
            if not child.has("ctr", "import"):
                continue
            fifo = child.argv[-1]
            if not fifo.startswith(handoff.IN_NODE):
                readers.append(child)
            elif (reader := probe.memory.get(fifo)) or (reader := fifo_reader(fifo, child.pid)):
                probe.memory[fifo] = reader
                readers.append(reader)
        return any(r.bytes_read() >= fraction * total for r in readers)

    return check


def fifo_reader(path: str, exclude: int) -> Child | None:
    """The process, other than `exclude`, whose arguments name FIFO `path`: `ctr import` in a
    node (containers' processes are in this host's /proc too). A scan of /proc, so it is made
    once per stream."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if path.encode() in argv:
            return Child(int(entry.name), tuple(a.decode(errors="replace") for a in argv if a))
    return None


def file_holds(path: Path, text: Callable[[Probe], str]) -> Trigger:
    """Once the file at `path` contains `text(probe)`."""

    def check(probe: Probe) -> bool:
        with contextlib.suppress(OSError):
            return text(probe) in path.read_text()
        return False

    return check


def every(seconds: float, trigger: Trigger) -> Trigger:
    """Checks `trigger` at most once per `seconds` (for checks that cost a request)."""

    def check(probe: Probe) -> bool:
        key = f"every-{id(trigger)}"
        now = time.monotonic()
        if now - probe.memory.get(key, 0.0) < seconds:
            return False
        probe.memory[key] = now
        return trigger(probe)

    return check


def api_holds(check: Callable[[Client], bool], seconds: float = 0.1) -> Trigger:
    """Once `check(client)` holds against the cluster's API (false while it does not answer)."""

    def probe_api(probe: Probe) -> bool:
        client = probe.api()
        if client is None:
            return False
        try:
            return check(client)
        except (OSError, RuntimeError, ValueError):
            return False

    return every(seconds, probe_api)


def docker_has(*filters: str, seconds: float = 0.2) -> Trigger:
    """Once `docker ps -a` lists a container matching every filter."""

    def check(probe: Probe) -> bool:
        args = [a for f in filters for a in ("--filter", f)]
        done = subprocess.run(
            ["docker", "ps", "-a", "-q", *args], capture_output=True, text=True, check=False
        )
        return bool(done.stdout.strip())

    return every(seconds, check)


def all_of(*triggers: Trigger) -> Trigger:
    return lambda probe: all(t(probe) for t in triggers)
