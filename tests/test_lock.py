"""lock: one run per deployment; a killed holder never leaves a stale lock."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from laconic_helm import paths
from laconic_helm.errors import EXIT_LOCKED, LockHeld
from laconic_helm.lock import deployment_lock
from tests.harness.waits import wait_until

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
    wait_until(ready.exists, "the holder to take the lock", interval=0.05)
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


# -- host-wide: root and other users contend on one lock ----------------------------------------

_OTHER_UIDS = (47101, 47102)
_SYSTEM_PYTHON = Path("/usr/bin/python3")  # readable by any user, unlike a root-only venv


@pytest.fixture
def host_locks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The host-wide lock folder, redirected into a fresh folder as open as /run/lock."""
    root = Path(tempfile.mkdtemp(prefix="laconic-helm-run-lock-"))
    root.chmod(0o1777)
    monkeypatch.delenv("LACONIC_HELM_STATE")
    monkeypatch.setattr(paths, "SYSTEM_LOCKS", root / "laconic-helm")
    yield root / "laconic-helm"
    shutil.rmtree(root)


def _as_user(uid: int, locks: Path, ready: Path | None, wait: float) -> subprocess.Popen[bytes]:
    """Runs the real lock code as `uid` (no LACONIC_HELM_STATE): holds it when `ready` is given,
    else tries once and exits 4 when it is held."""
    code = textwrap.dedent(
        f"""
        import asyncio, pathlib, sys
        from laconic_helm import lock, paths
        from laconic_helm.errors import LockHeld
        paths.SYSTEM_LOCKS = pathlib.Path({str(locks)!r})
        async def main():
            async with lock.deployment_lock("lab", wait={wait}):
                if {str(ready) if ready else ""!r}:
                    pathlib.Path({str(ready)!r}).write_text("held")
                    await asyncio.sleep(60)
        try:
            asyncio.run(main())
        except LockHeld as exc:
            print(exc.message)
            sys.exit(exc.exit_code)
        """
    )
    driver = Path(paths.__file__).resolve().parent.parent
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(driver), "HOME": str(locks.parent)}
    return subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         str(_SYSTEM_PYTHON), "-c", code],
        env=env, stdout=subprocess.PIPE, cwd="/",
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or not _SYSTEM_PYTHON.exists() or shutil.which("setpriv") is None,
    reason="needs root, setpriv and a system python to run as other uids",
)
def test_root_and_other_users_contend_on_one_host_wide_lock(host_locks: Path) -> None:
    ready = host_locks.parent / "ready"
    holder = _as_user(_OTHER_UIDS[0], host_locks, ready, wait=0)
    try:

        def locked() -> bool:
            assert holder.poll() is None, "the holder exited before it locked"
            return ready.exists()

        wait_until(locked, "the other user's holder to lock", interval=0.05)

        async def as_root() -> None:
            async with deployment_lock("lab", wait=0.3):
                pass

        with pytest.raises(LockHeld) as caught:  # root's run (ansible) waits for the operator's
            asyncio.run(as_root())
        assert f"pid {holder.pid}" in caught.value.message
        other = _as_user(_OTHER_UIDS[1], host_locks, None, wait=0)
        out, _ = other.communicate(timeout=30)
        assert other.returncode == EXIT_LOCKED, out
    finally:
        holder.kill()
        holder.wait()
    other = _as_user(_OTHER_UIDS[1], host_locks, None, wait=2)  # the kernel dropped it
    assert other.wait(timeout=30) == 0
    asyncio.run(as_root())
    assert stat.S_IMODE(host_locks.stat().st_mode) == 0o1777
    lock_file = host_locks / "lab.lock"
    assert lock_file.stat().st_uid == _OTHER_UIDS[0]
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o666
