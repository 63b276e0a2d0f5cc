"""Shared by the tests of the cluster package (tests/test_cluster_*.py): specs, nodes, records."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laconic_helm.cluster.nodes import BindMount, Node, PortBinding
from laconic_helm.cluster.record import Record
from laconic_helm.spec import parse_spec

if TYPE_CHECKING:
    import pytest

    from laconic_helm.actions import Action

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_cluster(**doc: Any) -> Any:
    doc.setdefault("name", "lh")
    return parse_spec({"cluster": doc}, source="test.yaml", base=Path("/")).cluster


def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points the driver's state folder into the test's own folder; returns it."""
    home = tmp_path / "state"
    monkeypatch.setenv("LACONIC_HELM_STATE", str(home))
    return home


def make_node(
    name: str = "lh-control-plane",
    *,
    id: str = "id-cp",
    role: str = "control-plane",
    status: str = "running",
    created: datetime = T0 + timedelta(seconds=5),
    image: str = "kindest/node:v1.35.0",
    ports: tuple[PortBinding, ...] = (PortBinding(6443, "TCP", "127.0.0.1", 41234),),
    mounts: tuple[BindMount, ...] = (),
) -> Node:
    return Node(name, id, role, status, created, created, image, ports, mounts)


def make_record(status: str = "created", ids: tuple[str, ...] = ("id-cp",)) -> Record:
    return Record("lh", status, T0.isoformat(), ids)  # type: ignore[arg-type]


def verbs(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.verb, a.target) for a in actions]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
