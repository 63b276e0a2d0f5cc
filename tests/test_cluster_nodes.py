"""Tests of cluster/nodes.py: reading node containers from `docker inspect` (`unit`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from laconic_helm import docker
from laconic_helm.cluster import nodes
from laconic_helm.cluster.nodes import BindMount, PortBinding


def inspect_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Id": "a" * 64,
        "Name": "/lh-control-plane",
        "Created": "2026-01-01T12:00:01.123456789Z",
        "State": {"Status": "running", "StartedAt": "2026-01-01T12:00:02.5Z"},
        "Config": {
            "Image": "kindest/node:v1.35.0",
            "Labels": {docker.CLUSTER_LABEL: "lh", docker.ROLE_LABEL: "control-plane"},
        },
        "HostConfig": {
            "PortBindings": {
                "80/tcp": [{"HostIp": "", "HostPort": "80"}],
                "6443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}],
                "8001/udp": [{"HostIp": "0.0.0.0", "HostPort": "8001"}],
                "9999/tcp": [{"HostIp": "", "HostPort": ""}],
            }
        },
        "Mounts": [
            {"Type": "bind", "Source": "/srv", "Destination": "/mnt", "RW": True,
             "Propagation": "rslave"},
            {"Type": "bind", "Source": "/lib/modules", "Destination": "/lib/modules",
             "RW": False, "Propagation": "rprivate"},
            {"Type": "volume", "Source": "/var/lib/docker/volumes/x/_data", "Destination": "/var",
             "RW": True, "Propagation": ""},
        ],
    }  # fmt: skip
    doc.update(overrides)
    return doc


@pytest.mark.unit
def test_parse_node_reads_ports_mounts_and_times() -> None:
    node = nodes.parse_node(inspect_doc())
    assert (node.name, node.role, node.status, node.running) == (
        "lh-control-plane", "control-plane", "running", True,
    )  # fmt: skip
    assert node.created == datetime(2026, 1, 1, 12, 0, 1, 123456, tzinfo=UTC)
    assert node.started == datetime(2026, 1, 1, 12, 0, 2, 500000, tzinfo=UTC)
    assert set(node.ports) == {
        PortBinding(80, "TCP", "0.0.0.0", 80),
        PortBinding(6443, "TCP", "127.0.0.1", 41234),
        PortBinding(8001, "UDP", "0.0.0.0", 8001),
    }
    assert node.mounts == (
        BindMount("/lib/modules", "/lib/modules", True, "None"),
        BindMount("/srv", "/mnt", False, "HostToContainer"),
    )
    assert nodes.api_binding(node.ports) == PortBinding(6443, "TCP", "127.0.0.1", 41234)


@pytest.mark.unit
def test_parse_node_of_a_never_started_container() -> None:
    doc = inspect_doc(State={"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"})
    node = nodes.parse_node(doc)
    assert (node.status, node.running, node.started) == ("created", False, None)
