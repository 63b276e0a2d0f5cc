"""Where the driver keeps its own files: records, locks, generated configs (private to the user)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Returns the state folder, created 0700: $LACONIC_HELM_STATE, else XDG state home."""
    override = os.environ.get("LACONIC_HELM_STATE")
    xdg = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    path = Path(override) if override else xdg / "laconic-helm"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
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
