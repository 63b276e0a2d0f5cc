"""proc: the single process launcher, exercised with real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from laconic_helm import proc
from laconic_helm.errors import CommandError, ToolMissingError

pytestmark = pytest.mark.unit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_run_captures_output_and_feeds_stdin() -> None:
    done = asyncio.run(proc.run(["cat"], input=b"hello"))
    assert done.stdout == b"hello"
    assert done.returncode == 0


def test_failure_raises_command_error_with_redacted_argv_and_last_line() -> None:
    script = "import sys; print('first'); print('the real cause', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CommandError) as caught:
        asyncio.run(proc.run([sys.executable, "-c", script, "s3cret"], redact=["s3cret"]))
    assert caught.value.returncode == 3
    assert "the real cause" in caught.value.message
    assert "s3cret" not in " ".join(caught.value.argv)
    assert proc.REDACTED in caught.value.argv


def test_missing_program_is_a_tool_error() -> None:
    with pytest.raises(ToolMissingError, match="no-such-program-xyz: not found"):
        asyncio.run(proc.run(["no-such-program-xyz"]))


def test_display_masks_secrets() -> None:
    assert proc.display(["helm", "--token", "abc def"], redact=["abc def"]) == "helm --token '***'"


def test_cancelling_stops_the_child_with_sigint_first(tmp_path) -> None:
    marker = tmp_path / "got-sigint"
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        def on_int(*_):
            open({str(marker)!r}, "w").write("yes")
            sys.exit(1)
        signal.signal(signal.SIGINT, on_int)
        print("ready", flush=True)
        time.sleep(60)
        """
    )

    async def scenario() -> None:
        task = asyncio.create_task(proc.run([sys.executable, "-c", script]))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(scenario())
    assert marker.read_text() == "yes"
    assert time.monotonic() - start < 10


def test_children_die_with_a_sigkilled_driver(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    driver = textwrap.dedent(
        f"""
        import asyncio
        from laconic_helm import proc
        async def main():
            p = await proc.spawn(["sleep", "60"])
            open({str(pidfile)!r}, "w").write(str(p.pid))
            await p.wait()
        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "driver never started its child"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its SIGKILLed parent"
