"""Tests of cluster/memlock.py: the high-memlock runtime's base spec and containerd patch."""

from __future__ import annotations

import json
import stat
import tomllib
from typing import TYPE_CHECKING

import pytest

from laconic_helm.cluster import memlock
from tests.cluster_support import private_state

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_state(tmp_path, monkeypatch)


@pytest.mark.unit
def test_memlock_base_spec_raises_memlock_and_open_files() -> None:
    doc = json.loads(json.dumps(memlock.memlock_base_spec()))
    limits = {r["type"]: (r["soft"], r["hard"]) for r in doc["process"]["rlimits"]}
    assert limits == {
        "RLIMIT_MEMLOCK": (2**64 - 1, 2**64 - 1),
        "RLIMIT_NOFILE": (1048576, 1048576),
    }
    assert doc["root"] == {"path": "rootfs"}
    assert {m["destination"] for m in doc["mounts"]} >= {"/proc", "/dev", "/sys"}


@pytest.mark.unit
def test_containerd_patch_adds_a_runc_runtime_on_the_mounted_base_spec() -> None:
    doc = tomllib.loads(memlock.memlock_containerd_patch())
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    runtime = cri["containerd"]["runtimes"][memlock.MEMLOCK_RUNTIME]
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["base_runtime_spec"] == memlock.MEMLOCK_SPEC_IN_NODE
    assert runtime["options"] == {"SystemdCgroup": True}


@pytest.mark.unit
def test_base_spec_file_is_private_in_the_clusters_state_folder(state_home: Path) -> None:
    path = memlock.write_memlock_spec("lh")
    assert path == state_home / "clusters" / "lh" / path.name
    assert json.loads(path.read_text()) == memlock.memlock_base_spec()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
