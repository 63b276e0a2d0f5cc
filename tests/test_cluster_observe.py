"""Tests of observing real node containers (`docker`, made by tests/harness/nodes.py), and of
what the package plans and does with what it sees; through the package's exports, as callers use
them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from laconic_helm import cluster
from laconic_helm.cluster import BindMount, PortBinding, Record
from laconic_helm.errors import UserError
from tests.cluster_support import T0, free_port, make_cluster, private_state, verbs


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_state(tmp_path, monkeypatch)


@pytest.fixture
def nodes_mod() -> Any:
    from tests.harness import nodes

    return nodes


@pytest.fixture
def cluster_name(nodes_mod: Any) -> Any:
    name = f"lht-{uuid.uuid4().hex[:8]}"
    yield name
    nodes_mod.delete_cluster(name)


def harness_node(nodes_mod: Any, name: str, **kw: Any) -> Any:
    return nodes_mod.NodeSpec(f"{name}-control-plane", "control-plane", **kw)


@pytest.mark.docker
def test_observe_reads_ports_and_mounts_of_node_containers(
    nodes_mod: Any, cluster_name: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    http, dns = free_port(), free_port()  # fixed numbers collided with other processes' ports
    spec = harness_node(
        nodes_mod,
        cluster_name,
        ports=[nodes_mod.PortMapping(80, http), nodes_mod.PortMapping(53, dns, "UDP")],
        mounts=[nodes_mod.Mount(str(data), "/mnt", read_only=True)],
    )
    nodes_mod.create_cluster(cluster_name, [spec])
    want = make_cluster(
        name=cluster_name,
        ports=[{"containerPort": 80, "hostPort": http, "listenAddress": "127.0.0.1"}],
        mounts=[{"hostPath": str(data), "containerPath": "/mnt"}],
    )
    state = asyncio.run(cluster.observe_cluster(want))
    assert [n.name for n in state.nodes] == [f"{cluster_name}-control-plane"]
    cp = state.control_plane
    assert cp is not None and cp.running
    assert set(cp.ports) == {
        PortBinding(80, "TCP", "127.0.0.1", http),
        PortBinding(53, "UDP", "127.0.0.1", dns),
    }
    assert BindMount(str(data), "/mnt", True, "None") in cp.mounts
    assert state.publishes(dns, "UDP") and not state.publishes(dns, "TCP")
    assert not state.owned and "no record" in state.ownership
    assert cluster.differences(want, state) == [
        f"host port {dns}/UDP is published (127.0.0.1:{dns} -> node port 53) but not in the spec",
        "mount /mnt is read-only, the spec asks for the opposite",
    ]


@pytest.mark.docker
def test_a_same_named_cluster_not_ours_is_refused_and_kept(
    nodes_mod: Any, cluster_name: str
) -> None:
    nodes_mod.create_cluster(cluster_name, [harness_node(nodes_mod, cluster_name)])
    want = make_cluster(name=cluster_name, ports=[{"containerPort": 80, "hostPort": 38481}])
    state = asyncio.run(cluster.observe_cluster(want))
    with pytest.raises(UserError, match=f"cluster {cluster_name}: "):
        cluster.plan_cluster(want, state, recreate=True)
    with pytest.raises(UserError, match="will not delete it"):
        asyncio.run(cluster.delete_cluster(want))
    assert nodes_mod.list_nodes(cluster_name) == [f"{cluster_name}-control-plane"]


@pytest.mark.docker
def test_ownership_follows_the_record_and_the_container_ids(
    nodes_mod: Any, cluster_name: str
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    cluster.write_record(Record(cluster_name, "creating", before.isoformat()))
    nodes_mod.create_cluster(cluster_name, [harness_node(nodes_mod, cluster_name)])
    want = make_cluster(name=cluster_name)
    state = asyncio.run(cluster.observe_cluster(want))
    assert state.owned and state.unfinished
    assert "laconic-helm's create of it never finished" in state.problems
    assert verbs(cluster.plan_cluster(want, state)) == [
        ("delete-cluster", cluster_name),
        ("create-cluster", cluster_name),
    ]
    # A record written after the containers were made does not claim them.
    cluster.write_record(Record(cluster_name, "creating", datetime.now(UTC).isoformat()))
    assert not asyncio.run(cluster.observe_cluster(want)).owned
    # A finished record owns exactly the containers it lists.
    ids = tuple(n.id for n in state.nodes)
    cluster.write_record(Record(cluster_name, "created", before.isoformat(), ids))
    assert asyncio.run(cluster.observe_cluster(want)).owned
    cluster.write_record(Record(cluster_name, "created", before.isoformat(), ("0" * 64,)))
    assert not asyncio.run(cluster.observe_cluster(want)).owned


@pytest.mark.docker
def test_a_stopped_node_of_ours_is_started_not_rebuilt(nodes_mod: Any, cluster_name: str) -> None:
    nodes_mod.create_cluster(cluster_name, [harness_node(nodes_mod, cluster_name)])
    node = f"{cluster_name}-control-plane"
    nodes_mod.docker("stop", "-t", "1", node)
    want = make_cluster(name=cluster_name)
    ids = tuple(n.id for n in asyncio.run(cluster.list_nodes(cluster_name)))
    cluster.write_record(Record(cluster_name, "created", T0.isoformat(), ids))
    state = asyncio.run(cluster.observe_cluster(want))
    assert state.problems == (f"node {node} is exited, not running",)
    actions = cluster.plan_cluster(want, state)
    assert verbs(actions) == [("start-node", node)]
    asyncio.run(cluster.apply_cluster(want, state, actions))
    (after,) = asyncio.run(cluster.list_nodes(cluster_name))
    assert after.running and after.id == ids[0]
