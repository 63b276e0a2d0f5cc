"""Tests of preflight.py: each bad host condition is one line naming the object, exit code 2,
raised before anything changes."""

from __future__ import annotations

import asyncio
import socket
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm import cluster, preflight
from laconic_helm.cluster import ClusterState, Node, PortBinding
from laconic_helm.errors import ToolMissingError, UserError
from laconic_helm.spec import parse_spec


def make_cluster(**doc: Any) -> Any:
    doc.setdefault("name", "lh")
    return parse_spec({"cluster": doc}, source="test.yaml", base=Path("/")).cluster


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_api(port: int) -> ClusterState:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    cp = Node(
        "lh-control-plane",
        "id",
        "control-plane",
        "running",
        now,
        now,
        "img",
        (PortBinding(cluster.API_PORT, "TCP", "127.0.0.1", port),),
    )
    return ClusterState("lh", nodes=(cp,), host_ports=frozenset({(port, "TCP")}))


def kubeconfig(path: Path, contexts: dict[str, str]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": s}} for n, s in contexts.items()],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in contexts],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


# -- mount sources ----------------------------------------------------------------------------


@pytest.mark.unit
def test_missing_mount_source_names_key_and_path(tmp_path: Path) -> None:
    gone = tmp_path / "ledger"
    spec = make_cluster(
        mounts=[
            {"hostPath": str(tmp_path), "containerPath": "/a"},
            {"hostPath": str(gone), "containerPath": "/mnt/ledger"},
        ]
    )
    with pytest.raises(UserError) as caught:
        preflight.check_mount_sources(spec)
    assert caught.value.exit_code == 2
    assert caught.value.message == f"cluster.mounts[1].hostPath: {gone} does not exist"


@pytest.mark.unit
def test_mount_source_must_be_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    spec = make_cluster(mounts=[{"hostPath": str(file), "containerPath": "/a"}])
    with pytest.raises(UserError, match=r"cluster.mounts\[0\].hostPath: .* is not a folder"):
        preflight.check_mount_sources(spec)
    preflight.check_mount_sources(
        make_cluster(mounts=[{"hostPath": str(tmp_path), "containerPath": "/a"}])
    )


# -- host ports --------------------------------------------------------------------------------


@pytest.mark.unit
def test_port_in_use_sees_tcp_listeners_and_udp_binds() -> None:
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        assert preflight.port_in_use("127.0.0.1", port, "TCP") is True
        assert preflight.port_in_use("0.0.0.0", port, "TCP") is True
    assert preflight.port_in_use("127.0.0.1", port, "TCP") is False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        uport = udp.getsockname()[1]
        assert preflight.port_in_use("127.0.0.1", uport, "UDP") is True
    assert preflight.port_in_use("127.0.0.1", uport, "UDP") is False


@pytest.mark.unit
def test_an_address_not_on_this_host_is_named() -> None:
    spec = make_cluster(
        ports=[{"containerPort": 80, "hostPort": free_port(), "listenAddress": "192.0.2.77"}]
    )
    with pytest.raises(UserError, match=r"^cluster.ports\[0\].listenAddress: listen address "):
        asyncio.run(preflight.check_ports(spec, ClusterState("lh")))


@pytest.mark.docker
def test_port_held_by_another_process_is_refused() -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = make_cluster(ports=[{"containerPort": 80, "hostPort": port}])
        with pytest.raises(UserError) as caught:
            asyncio.run(preflight.check_ports(spec, ClusterState("lh")))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"cluster.ports[0]: host port {port}/TCP on 0.0.0.0 is in use by another process"
    )


@pytest.mark.unit
def test_ports_free_or_held_by_this_cluster_pass() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        spec = make_cluster(
            ports=[
                {"containerPort": 80, "hostPort": port},
                {"containerPort": 443, "hostPort": free_port()},
            ]
        )
        # The cluster's own node publishes `port`: that is not a clash.
        asyncio.run(preflight.check_ports(spec, with_api(port)))


@pytest.mark.docker
def test_a_port_published_by_a_container_names_it(tmp_path: Path) -> None:
    from tests.harness import nodes

    name = f"lht-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        nodes.create_cluster(
            name,
            [
                nodes.NodeSpec(
                    f"{name}-control-plane",
                    "control-plane",
                    ports=[nodes.PortMapping(80, port, listen_address="0.0.0.0")],
                )
            ],
        )
        spec = make_cluster(ports=[{"containerPort": 80, "hostPort": port}])
        with pytest.raises(UserError) as caught:
            asyncio.run(preflight.check_ports(spec, ClusterState("lh")))
        assert caught.value.message.endswith(
            f"is in use by container {name}-control-plane of kind cluster {name}"
        )
    finally:
        nodes.delete_cluster(name)


# -- kube context -------------------------------------------------------------------------------


@pytest.mark.unit
def test_kind_context_of_another_cluster_is_refused() -> None:
    spec = make_cluster(context="kind-other")
    with pytest.raises(UserError) as caught:
        asyncio.run(preflight.check_context(spec, ClusterState("lh"), files=[]))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        "cluster.context: 'kind-other' is not the context of kind cluster 'lh' (that is 'kind-lh')"
    )


@pytest.mark.unit
def test_kind_context_must_reach_this_clusters_api(tmp_path: Path) -> None:
    files = [kubeconfig(tmp_path / "config", {"kind-lh": "https://127.0.0.1:40001"})]
    spec = make_cluster()
    asyncio.run(preflight.check_context(spec, with_api(40001), files=files))
    asyncio.run(preflight.check_context(spec, ClusterState("lh"), files=files))  # absent: no check
    with pytest.raises(UserError) as caught:
        asyncio.run(preflight.check_context(spec, with_api(40002), files=files))
    assert caught.value.message == (
        f"kube context kind-lh in {files[0]} points at https://127.0.0.1:40001, not at kind "
        "cluster lh's API (127.0.0.1:40002)"
    )
    assert "kind export kubeconfig --name lh" in (caught.value.hint or "")


@pytest.mark.unit
def test_existing_provider_needs_its_context(tmp_path: Path) -> None:
    files = [
        kubeconfig(tmp_path / "a", {"prod": "https://10.0.0.1:6443"}),
        kubeconfig(tmp_path / "b", {"prod": "https://shadowed:1", "lab": "https://10.0.0.2"}),
    ]
    asyncio.run(
        preflight.check_context(
            make_cluster(provider="existing", context="lab"),
            ClusterState("lh", "existing"),
            files=files,
        )
    )
    with pytest.raises(UserError, match=r"^cluster.context: context 'staging' is not in the kube"):
        asyncio.run(
            preflight.check_context(
                make_cluster(provider="existing", context="staging"),
                ClusterState("lh", "existing"),
                files=files,
            )
        )
    servers = preflight.read_context_servers(files)
    assert servers["prod"] == ("https://10.0.0.1:6443", files[0])


@pytest.mark.unit
def test_kubeconfig_files_follow_kubeconfig_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    assert preflight.kubeconfig_files() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert preflight.kubeconfig_files() == [tmp_path / ".kube" / "config"]


# -- tools ---------------------------------------------------------------------------------------


def fake_tool(tmp_path: Path, name: str, output: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.docker
def test_old_kind_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LACONIC_HELM_KIND", str(fake_tool(tmp_path, "kind", "kind v0.14.0 go1.18")))
    with pytest.raises(ToolMissingError, match=r"^kind v0.14.0: laconic-helm needs kind v0.17.0"):
        asyncio.run(preflight.check_tools(make_cluster()))
    monkeypatch.setenv("LACONIC_HELM_KIND", str(fake_tool(tmp_path, "kind2", "kind v0.33.0 go")))
    asyncio.run(preflight.check_tools(make_cluster()))


@pytest.mark.docker
def test_missing_kind_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LACONIC_HELM_KIND", str(tmp_path / "no-such-kind"))
    with pytest.raises(ToolMissingError, match=r"^kind: not found"):
        asyncio.run(preflight.check_tools(make_cluster()))
    # provider existing needs no kind at all
    asyncio.run(preflight.check_tools(make_cluster(provider="existing", context="x")))


def test_registry_port_held_by_another_process_is_named_before_anything_moves(
    tmp_path: Path,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        doc = {"images": ["me/app:1"], "imageDelivery": {"local": {"port": port}}}
        spec = parse_spec(doc, source="d.yaml", base=tmp_path)
        with pytest.raises(UserError) as caught:
            asyncio.run(preflight.check_registry_port(spec))
        assert caught.value.message == (
            f"imageDelivery.local.port: host port {port}/TCP on 127.0.0.1 is in use by "
            "another process"
        )
        streamed = {**doc, "imageDelivery": {"mode": "stream", "local": {"port": port}}}
        asyncio.run(preflight.check_registry_port(parse_spec(streamed, source="d", base=tmp_path)))
