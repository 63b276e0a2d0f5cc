"""Where the driver keeps its own files: records, locks, generated configs.

Run as root (ansible), the state is host-wide under /var/lib/laconic-helm, so it outlives any
user's home; run as another user, it is that user's, under the XDG state home. Locks are
host-wide whenever they can be (/run/lock/laconic-helm), so root's run and an operator's shell
contend on one lock per cluster. $LACONIC_HELM_STATE puts both state and locks in one folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

log = logging.getLogger(__name__)

SYSTEM_STATE = Path("/var/lib/laconic-helm")
SYSTEM_LOCKS = Path("/run/lock/laconic-helm")
# A kind node mounts this file from the state folder it was created with: it is never removed
# from there while the node may need it.
MEMLOCK_SPEC_NAME = "high-memlock-spec.json"


def _user_state() -> Path:
    xdg = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return xdg / "laconic-helm"


def state_dir() -> Path:
    """Returns the state folder, created 0700: $LACONIC_HELM_STATE, else /var/lib/laconic-helm
    for root (after moving root's per-user records there), else the user's XDG state home."""
    override = os.environ.get("LACONIC_HELM_STATE")
    if override:
        path = Path(override)
    elif os.geteuid() == 0:
        path = SYSTEM_STATE
        private_dir(path)
        _move_user_records(_user_state(), path)
    else:
        path = _user_state()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _move_user_records(old: Path, new: Path) -> None:
    """Moves the cluster folders that an earlier version kept in root's own state home, once:
    a folder moves only when it holds a record the system location lacks. A memlock spec is
    copied, not moved: the node created with it mounts it from the old place."""
    for folder in sorted(old.glob("clusters/*/")):
        target = new / "clusters" / folder.name
        if not (folder / "record.json").is_file() or target.exists():
            continue
        private_dir(target.parent)
        shutil.copytree(folder, target)
        for item in folder.iterdir():
            if item.name == MEMLOCK_SPEC_NAME:
                continue
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        log.warning(
            "moved the records of cluster %s from %s to %s (state is host-wide when run as root)",
            folder.name, folder, target,
        )  # fmt: skip


def lock_dir() -> Path:
    """Returns the folder of the deployment locks: in the $LACONIC_HELM_STATE folder when set,
    else the host-wide /run/lock/laconic-helm, sticky and open to all as /run/lock itself is;
    a user who cannot make that folder falls back to their state folder, with a warning."""
    if os.environ.get("LACONIC_HELM_STATE"):
        path = state_dir() / "locks"
        path.mkdir(mode=0o700, exist_ok=True)
        return path
    try:
        SYSTEM_LOCKS.mkdir(exist_ok=True)
        found = SYSTEM_LOCKS.stat()
        if found.st_uid == os.geteuid() and stat.S_IMODE(found.st_mode) != 0o1777:
            SYSTEM_LOCKS.chmod(0o1777)  # mkdir's mode is cut by the umask
        return SYSTEM_LOCKS
    except OSError as exc:
        path = state_dir() / "locks"
        log.warning(
            "cannot use the host-wide lock folder %s (%s); locking in %s: runs as other users "
            "will not see this run's lock", SYSTEM_LOCKS, exc.strerror, path,
        )  # fmt: skip
        path.mkdir(mode=0o700, exist_ok=True)
        return path


def private_dir(path: Path) -> None:
    """Creates folder `path` and each missing folder above it with mode 0700 (`mkdir`'s
    `parents` would give those the default mode: a listing others could read)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` atomically with mode 0600, so a killed run never leaves half a file."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
