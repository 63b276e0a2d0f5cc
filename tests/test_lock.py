"""lock: one run per deployment; a killed holder never leaves a stale lock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from laconic_helm.errors import EXIT_LOCKED, LockHeld
from laconic_helm.lock import deployment_lock

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LACONIC_HELM_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def _holder(state: Path, ready: Path) -> subprocess.Popen[bytes]:
    code = textwrap.dedent(
        f"""
        import asyncio, os, pathlib
        os.environ["LACONIC_HELM_STATE"] = {str(state)!r}
        from laconic_helm.lock import deployment_lock
        async def main():
            async with deployment_lock("lab", wait=0):
                pathlib.Path({str(ready)!r}).write_text("held")
                await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "holder never took the lock"
        time.sleep(0.05)
    return proc


def test_second_run_waits_then_fails_with_lock_code(state: Path, tmp_path: Path) -> None:
    holder = _holder(state, tmp_path / "ready")
    try:

        async def second() -> None:
            async with deployment_lock("lab", wait=0.5):
                pass

        start = time.monotonic()
        with pytest.raises(LockHeld) as caught:
            asyncio.run(second())
        assert time.monotonic() - start >= 0.5
        assert caught.value.exit_code == EXIT_LOCKED
        assert f"pid {holder.pid}" in caught.value.message
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_releases_the_lock(state: Path, tmp_path: Path) -> None:
    holder = _holder(state, tmp_path / "ready")
    holder.kill()
    holder.wait()

    async def next_run() -> str:
        async with deployment_lock("lab", wait=2):
            return "ran"

    assert asyncio.run(next_run()) == "ran"


def test_other_deployments_do_not_block(state: Path, tmp_path: Path) -> None:
    holder = _holder(state, tmp_path / "ready")
    try:

        async def other() -> str:
            async with deployment_lock("other", wait=0):
                return "ran"

        assert asyncio.run(other()) == "ran"
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_is_private(state: Path) -> None:
    async def once() -> None:
        async with deployment_lock("lab", wait=0):
            pass

    asyncio.run(once())
    assert (state / "locks" / "lab.lock").stat().st_mode & 0o077 == 0
    assert state.stat().st_mode & 0o077 == 0


def test_images_load_waits_for_a_deploy_of_its_cluster(state: Path, tmp_path: Path) -> None:
    # Concurrent loads into one node could drop each other's protection of half-sent layers.
    holder = _holder(state, tmp_path / "ready")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "laconic_helm", "--output", "json", "images", "load",
             "--cluster", "lab", "--lock-wait", "0", "busybox:latest"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == EXIT_LOCKED, done.stderr
    assert f"pid {holder.pid}" in json.loads(done.stdout)["error"]
