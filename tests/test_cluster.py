"""Tests of cluster.py: kind config, inspection parsing, ownership, differences and planning
(pure, `unit`), then observation of real node containers (`docker`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm import cluster, docker, paths
from laconic_helm.cluster import (
    BindMount,
    ClusterState,
    Node,
    PortBinding,
    Record,
)
from laconic_helm.errors import ClusterError, UserError
from laconic_helm.spec import parse_spec

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_cluster(**doc: Any) -> Any:
    doc.setdefault("name", "lh")
    return parse_spec({"cluster": doc}, source="test.yaml", base=Path("/")).cluster


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("LACONIC_HELM_STATE", str(home))
    return home


# -- kind config -------------------------------------------------------------------------------


@pytest.mark.unit
def test_default_config_is_one_labelled_control_plane() -> None:
    text = cluster.render_kind_config(make_cluster())
    assert text == (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        "name: lh\n"
        "kubeadmConfigPatches:\n"
        "- |\n"
        "  kind: KubeletConfiguration\n"
        "  containerLogMaxSize: 200Mi\n"
        "  containerLogMaxFiles: 5\n"
        "nodes:\n"
        "- role: control-plane\n"
        "  labels:\n"
        "    ingress-ready: 'true'\n"
    )


@pytest.mark.unit
def test_container_log_rotation_comes_before_the_hosts_own_patches() -> None:
    spec = make_cluster(
        containerLogs={"maxSize": "1Gi", "maxFiles": 3},
        kindPatches={"kubeadm": [{"kind": "KubeletConfiguration", "failCgroupV1": False}]},
    )
    patches = yaml.safe_load(cluster.render_kind_config(spec))["kubeadmConfigPatches"]
    assert [yaml.safe_load(p) for p in patches] == [
        {"kind": "KubeletConfiguration", "containerLogMaxSize": "1Gi", "containerLogMaxFiles": 3},
        {"kind": "KubeletConfiguration", "failCgroupV1": False},
    ]


@pytest.mark.unit
def test_config_carries_ports_mounts_image_and_memlock(tmp_path: Path) -> None:
    spec = make_cluster(
        nodeImage="kindest/node:v1.35.0",
        ports=[
            {"containerPort": 80, "hostPort": 80},
            {"containerPort": 8001, "hostPort": 8001, "protocol": "UDP", "listenAddress": "::"},
        ],
        mounts=[
            {"hostPath": "/srv/kind", "containerPath": "/mnt", "propagation": "HostToContainer"}
        ],
        highMemlock=True,
    )
    memlock = tmp_path / "high-memlock-spec.json"
    doc = yaml.safe_load(cluster.render_kind_config(spec, memlock_spec=memlock))
    node = doc["nodes"][0]
    assert node["image"] == "kindest/node:v1.35.0"
    assert node["extraPortMappings"] == [
        {"containerPort": 80, "hostPort": 80, "listenAddress": "0.0.0.0", "protocol": "TCP"},
        {"containerPort": 8001, "hostPort": 8001, "listenAddress": "::", "protocol": "UDP"},
    ]
    assert node["extraMounts"] == [
        {"hostPath": "/srv/kind", "containerPath": "/mnt", "readOnly": False,
         "propagation": "HostToContainer"},
        {"hostPath": str(memlock), "containerPath": cluster.MEMLOCK_SPEC_IN_NODE,
         "readOnly": True, "propagation": "None"},
    ]  # fmt: skip
    (patch,) = doc["containerdConfigPatches"]
    assert ".runtimes.high-memlock]" in patch
    assert f'base_runtime_spec = "{cluster.MEMLOCK_SPEC_IN_NODE}"' in patch
    assert "SystemdCgroup = true" in patch


@pytest.mark.unit
def test_config_text_is_deterministic_whatever_the_label_order() -> None:
    a = make_cluster(nodeLabels={"b": "2", "a": "1"})
    b = make_cluster(nodeLabels={"a": "1", "b": "2"})
    assert cluster.render_kind_config(a) == cluster.render_kind_config(b)
    assert list(yaml.safe_load(cluster.render_kind_config(a))["nodes"][0]["labels"]) == ["a", "b"]


@pytest.mark.unit
def test_memlock_needs_the_base_spec_file() -> None:
    with pytest.raises(ValueError, match="base spec"):
        cluster.kind_config(make_cluster(highMemlock=True))


@pytest.mark.unit
def test_memlock_base_spec_raises_memlock_and_open_files() -> None:
    doc = json.loads(json.dumps(cluster.memlock_base_spec()))
    limits = {r["type"]: (r["soft"], r["hard"]) for r in doc["process"]["rlimits"]}
    assert limits == {
        "RLIMIT_MEMLOCK": (2**64 - 1, 2**64 - 1),
        "RLIMIT_NOFILE": (1048576, 1048576),
    }
    assert doc["root"] == {"path": "rootfs"}
    assert {m["destination"] for m in doc["mounts"]} >= {"/proc", "/dev", "/sys"}


@pytest.mark.unit
def test_runtime_class_names_the_containerd_runtime() -> None:
    rc = cluster.runtime_class_manifest()
    assert (rc["apiVersion"], rc["kind"]) == ("node.k8s.io/v1", "RuntimeClass")
    assert rc["metadata"]["name"] == rc["handler"] == "high-memlock"
    assert f"runtimes.{rc['handler']}]" in cluster.memlock_containerd_patch()


@pytest.mark.unit
def test_runtime_class_planned_only_when_asked_for_and_missing() -> None:
    wanted = make_cluster(highMemlock=True)
    (action,) = cluster.plan_runtime_class(wanted, None)
    assert action.line() == "cluster: create-runtime-class high-memlock (handler high-memlock)"
    assert cluster.plan_runtime_class(wanted, cluster.runtime_class_manifest()) == []
    assert cluster.plan_runtime_class(make_cluster(), None) == []
    other = {**cluster.runtime_class_manifest(), "handler": "runc"}
    with pytest.raises(ClusterError, match="RuntimeClass high-memlock: handler 'runc'"):
        cluster.plan_runtime_class(wanted, other)


# -- docker inspect parsing ------------------------------------------------------------------


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
    node = cluster.parse_node(inspect_doc())
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
    assert cluster.api_binding(node.ports) == PortBinding(6443, "TCP", "127.0.0.1", 41234)


@pytest.mark.unit
def test_parse_node_of_a_never_started_container() -> None:
    doc = inspect_doc(State={"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"})
    node = cluster.parse_node(doc)
    assert (node.status, node.running, node.started) == ("created", False, None)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://127.0.0.1:41234", 41234),
        ("https://[::1]:6443", 6443),
        ("https://example.org", 443),
        ("http://localhost/", 80),
        ("nonsense", None),
    ],
)
def test_server_port(url: str, port: int | None) -> None:
    assert cluster.server_port(url) == port


@pytest.mark.unit
def test_kubeconfig_server_follows_the_context() -> None:
    text = yaml.safe_dump(
        {
            "clusters": [
                {"name": "c1", "cluster": {"server": "https://127.0.0.1:1"}},
                {"name": "c2", "cluster": {"server": "https://127.0.0.1:2"}},
            ],
            "contexts": [{"name": "kind-lh", "context": {"cluster": "c2", "user": "u"}}],
        }
    )
    assert cluster.kubeconfig_server(text, "kind-lh") == "https://127.0.0.1:2"
    assert cluster.kubeconfig_server(text, "kind-other") is None
    assert cluster.kubeconfig_server(": not yaml [", "kind-lh") is None


# -- ownership ------------------------------------------------------------------------------


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


def record(status: str = "created", ids: tuple[str, ...] = ("id-cp",)) -> Record:
    return Record("lh", status, T0.isoformat(), ids)  # type: ignore[arg-type]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rec", "nodes", "owned", "words"),
    [
        (None, [make_node()], False, "no record"),
        (record("creating", ()), [make_node()], True, "began creating"),
        (record("creating", ()), [make_node(created=T0 - timedelta(seconds=1))], False,
         "predate"),
        (record(), [make_node()], True, "created it"),
        (record("adopted"), [make_node()], True, "adopted it"),
        (record(ids=("id-cp", "id-w")), [make_node()], True, "created it"),
        (record(), [make_node(id="id-other")], False, "re-made by something else"),
        (record(), [make_node(), make_node("lh-worker", id="id-w", role="worker")], False,
         "re-made"),
    ],
)  # fmt: skip
def test_ownership(rec: Record | None, nodes: list[Node], owned: bool, words: str) -> None:
    got, why = cluster.judge_ownership(rec, nodes)
    assert got is owned
    assert words in why


@pytest.mark.unit
def test_record_round_trip_is_private(state_home: Path) -> None:
    rec = Record("lh", "created", T0.isoformat(), ("id-cp",), "abc")
    cluster.write_record(rec)
    assert cluster.read_record("lh") == rec
    path = cluster.record_path("lh")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cluster.read_record("absent") is None


@pytest.mark.unit
def test_damaged_record_proves_nothing(state_home: Path) -> None:
    path = cluster.record_path("lh")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cluster.read_record("lh") is None


# -- differences ----------------------------------------------------------------------------

API = PortBinding(6443, "TCP", "127.0.0.1", 41234)


def fitting_state(**node: Any) -> ClusterState:
    base = {
        "ports": (PortBinding(80, "TCP", "0.0.0.0", 80), API),
        "mounts": (BindMount("/srv/kind", "/mnt", False, "HostToContainer"),),
    }
    base.update(node)
    return ClusterState(
        "lh",
        nodes=(make_node(**base),),
        record=record(),
        owned=True,
        ownership="laconic-helm created it",
        api_ready=True,
        node_labels={"ingress-ready": "true", "kubernetes.io/os": "linux"},
    )


FITTING_SPEC = {
    "ports": [{"containerPort": 80, "hostPort": 80}],
    "mounts": [
        {"hostPath": "/srv/kind", "containerPath": "/mnt", "propagation": "HostToContainer"}
    ],
}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec_changes", "state_changes", "expected"),
    [
        ({}, {}, []),
        ({"ports": [*FITTING_SPEC["ports"], {"containerPort": 443, "hostPort": 443}]}, {},
         ["host port 443/TCP is not published (spec: 0.0.0.0:443 -> node port 443)"]),
        ({"ports": [{"containerPort": 80, "hostPort": 80, "listenAddress": "127.0.0.1"}]}, {},
         ["host port 80/TCP is published as 0.0.0.0:80 -> node port 80; "
          "spec: 127.0.0.1:80 -> node port 80"]),
        ({"ports": []}, {},
         ["host port 80/TCP is published (0.0.0.0:80 -> node port 80) but not in the spec"]),
        ({"mounts": []}, {}, []),
        ({"mounts": [{"hostPath": "/srv/other", "containerPath": "/mnt",
                      "propagation": "HostToContainer"}]}, {},
         ["mount /mnt comes from /srv/kind, the spec asks for /srv/other"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/data"}]}, {},
         ["mount /data is absent (spec: /srv/kind)"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/mnt", "readOnly": True,
                      "propagation": "HostToContainer"}]}, {},
         ["mount /mnt is writable, the spec asks for the opposite"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/mnt"}]}, {},
         ["mount /mnt has propagation HostToContainer, the spec asks for None"]),
        ({"nodeImage": "kindest/node:v1.36.0"}, {},
         ["node image is kindest/node:v1.35.0, the spec asks for kindest/node:v1.36.0"]),
        ({"nodeImage": "kindest/node:v1.35.0"}, {}, []),
        ({"highMemlock": True}, {"memlock_runtime": False},
         ["the containerd runtime high-memlock is not configured in the node"]),
        ({"highMemlock": True}, {"memlock_runtime": True}, []),
        ({"nodeLabels": {"ingress-ready": "true", "tier": "rpc"}}, {},
         ["node label tier=rpc is missing"]),
        ({"nodeLabels": {"ingress-ready": "false"}}, {},
         ["node label ingress-ready is 'true', the spec asks for 'false'"]),
        ({"nodeLabels": {"tier": "rpc"}}, {"node_labels": None}, []),
    ],
)  # fmt: skip
def test_differences(
    spec_changes: dict[str, Any], state_changes: dict[str, Any], expected: list[str]
) -> None:
    spec = make_cluster(**{**FITTING_SPEC, **spec_changes})
    state = replace(fitting_state(), **state_changes)
    assert cluster.differences(spec, state) == expected


@pytest.mark.unit
def test_a_spec_that_maps_the_api_port_itself_is_compared_too() -> None:
    spec = make_cluster(
        ports=[{"containerPort": 6443, "hostPort": 41234, "listenAddress": "127.0.0.1"}]
    )
    assert cluster.differences(spec, fitting_state(ports=(API,))) == []


# -- planning -------------------------------------------------------------------------------


def verbs(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.verb, a.target) for a in actions]


STOPPED = make_node(status="exited")
ABSENT = ClusterState("lh", ownership="absent")


def state_of(**changes: Any) -> ClusterState:
    """A fitting state with changes; `ports`/`mounts` change its control-plane node."""
    node = {k: changes.pop(k) for k in ("ports", "mounts") if k in changes}
    return replace(fitting_state(**node), **changes)


NOT_OURS = {"owned": False, "record": None, "ownership": "laconic-helm has no record of it"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "flags", "expected"),
    [
        (ABSENT, {}, [("create-cluster", "lh")]),
        (replace(ABSENT, record=record()), {}, [("create-cluster", "lh")]),
        (state_of(), {}, []),
        (state_of(), {"recreate": True}, []),
        (state_of(record=record("creating", ()),
                  problems=("laconic-helm's create of it never finished",)), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(problems=("its API does not answer: refused",)), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(nodes=(STOPPED,), problems=(cluster.stopped_problem(STOPPED),)), {},
         [("start-node", "lh-control-plane")]),
        (state_of(record=record("creating", ()), nodes=(STOPPED,),
                  problems=("laconic-helm's create of it never finished",
                            cluster.stopped_problem(STOPPED))), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS), {}, []),
        (state_of(**NOT_OURS), {"adopt": True}, [("adopt-cluster", "lh")]),
        (state_of(**NOT_OURS, problems=("its API does not answer: refused",)), {"adopt": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS, nodes=(STOPPED,), problems=(cluster.stopped_problem(STOPPED),)),
         {"adopt": True}, [("adopt-cluster", "lh"), ("start-node", "lh-control-plane")]),
        (state_of(ports=(API,)), {"recreate": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS, ports=(API,)), {"recreate": True, "adopt": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
    ],
)  # fmt: skip
def test_plan(state: ClusterState, flags: dict[str, bool], expected: list[tuple[str, str]]) -> None:
    spec = make_cluster(**FITTING_SPEC)
    assert verbs(cluster.plan_cluster(spec, state, **flags)) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "flags", "words"),
    [
        # Ours but differs: fixed at creation, rebuilt only on request.
        (state_of(ports=(API,)), {},
         "cluster lh: differs from the spec (host port 80/TCP is not published (spec: "
         "0.0.0.0:80 -> node port 80)); these are fixed when a kind cluster is created"),
        # Not ours and differs: a name clash; recreate alone is not enough.
        (state_of(**NOT_OURS, ports=(API,)), {"recreate": True},
         "cluster lh: differs from the spec (host port 80/TCP is not published"),
        (state_of(**NOT_OURS, problems=("node lh-control-plane is exited, not running",)), {},
         "cluster lh: exists but is not healthy (node lh-control-plane is exited, not running) "
         "and laconic-helm has no record of it, so laconic-helm leaves it alone"),
    ],
)  # fmt: skip
def test_plan_refuses(state: ClusterState, flags: dict[str, bool], words: str) -> None:
    spec = make_cluster(**FITTING_SPEC)
    with pytest.raises(UserError) as caught:
        cluster.plan_cluster(spec, state, **flags)
    assert caught.value.exit_code == 2
    assert words in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.unit
def test_plan_refusal_hints_at_the_flags() -> None:
    spec = make_cluster(**FITTING_SPEC)
    with pytest.raises(UserError) as ours:
        cluster.plan_cluster(spec, state_of(ports=(API,)))
    assert "--recreate-cluster" in (ours.value.hint or "")
    with pytest.raises(UserError) as theirs:
        cluster.plan_cluster(spec, state_of(**NOT_OURS, ports=(API,)))
    assert "--adopt-cluster" in (theirs.value.hint or "")


@pytest.mark.unit
def test_existing_provider_plans_nothing() -> None:
    spec = make_cluster(provider="existing", context="prod")
    assert cluster.plan_cluster(spec, ClusterState("lh", "existing")) == []


@pytest.mark.unit
def test_plan_delete() -> None:
    spec = make_cluster()
    assert cluster.plan_delete_cluster(spec, ABSENT) == []
    assert verbs(cluster.plan_delete_cluster(spec, state_of())) == [("delete-cluster", "lh")]
    with pytest.raises(UserError, match="will not delete it"):
        cluster.plan_delete_cluster(spec, state_of(**NOT_OURS))
    adopted = state_of(record=record("adopted"))
    assert verbs(cluster.plan_delete_cluster(spec, adopted)) == [("delete-cluster", "lh")]
    with pytest.raises(UserError, match="never deletes"):
        cluster.plan_delete_cluster(make_cluster(provider="existing", context="x"), ABSENT)


# -- real node containers (docker) ------------------------------------------------------------


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


# -- whole runs against a kind (the stand-in here; real kind with LACONIC_HELM_E2E=1) --------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_port(container_port: int, host_port: int) -> dict[str, Any]:
    return {"containerPort": container_port, "hostPort": host_port, "listenAddress": "127.0.0.1"}


@dataclass
class KindLog:
    """Every kind command the driver runs, with the pid that ran it."""

    path: Path

    def calls(self) -> list[tuple[int, list[str]]]:
        if not self.path.exists():
            return []
        return [
            (int(pid), args.split())
            for pid, _, args in (line.partition(" ") for line in self.path.read_text().splitlines())
        ]

    def verbs(self) -> list[str]:
        return [" ".join(args[:2]) for _, args in self.calls()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def kind_log(kind_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KindLog:
    """Puts a recorder in front of the kind under test (exec keeps kind's own pid)."""
    log = KindLog(tmp_path / "kind-calls.log")
    wrapper = tmp_path / "kind-recorder"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {log.path}\nexec {kind_cli.binary} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("LACONIC_HELM_KIND", str(wrapper))
    return log


def node_ids(name: str) -> list[str]:
    return [n.id for n in asyncio.run(cluster.list_nodes(name))]


def test_create_rerun_refuse_recreate_delete(kind_cli: Any, kind_log: KindLog) -> None:
    name = kind_cli.new_name()
    port = free_port()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name, ports=[local_port(80, port)])

    first = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(first.actions)) == [("create-cluster", name)]
    assert first.state.owned and first.state.api_ready and first.state.problems == ()
    assert first.state.node_labels is not None
    assert first.state.node_labels["ingress-ready"] == "true"
    rec = cluster.read_record(name)
    assert rec is not None and rec.status == "created"
    assert list(rec.node_ids) == node_ids(name)
    kubeconfig = first.access.kubeconfig
    assert kubeconfig is not None and first.access.context == f"kind-{name}"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    api = first.state.api_endpoint
    server = cluster.kubeconfig_server(kubeconfig.read_text(), f"kind-{name}")
    assert api is not None and server is not None and cluster.server_port(server) == api.host_port

    # A re-run reads and changes nothing, and asks kind nothing: the driver's own copy of the
    # kubeconfig still reaches the API.
    kind_log.clear()
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and not again.changed
    assert kind_log.verbs() == []
    assert again.state.api_ready and again.state.node_labels is not None

    # A stale copy (another port) is not trusted: kind is asked again, and the copy refreshed.
    kubeconfig.write_text(kubeconfig.read_text().replace(f":{api.host_port}", ":1"))
    kind_log.clear()
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and set(kind_log.verbs()) == {"get kubeconfig"}
    assert (
        cluster.server_port(cluster.kubeconfig_server(kubeconfig.read_text(), f"kind-{name}") or "")
        == api.host_port
    )
    assert list(rec.node_ids) == node_ids(name)

    # Ports are fixed at creation: a new one is named, and nothing changes without the flag.
    extra = free_port()
    wider = make_cluster(
        **kind_cli.cluster_fields(), name=name, ports=[local_port(80, port), local_port(443, extra)]
    )
    with pytest.raises(UserError) as caught:
        asyncio.run(cluster.ensure_cluster(wider))
    assert caught.value.message == (
        f"cluster {name}: differs from the spec (host port {extra}/TCP is not published "
        f"(spec: 127.0.0.1:{extra} -> node port 443)); these are fixed when a kind cluster "
        "is created"
    )
    assert list(rec.node_ids) == node_ids(name)

    rebuilt = asyncio.run(cluster.ensure_cluster(wider, recreate=True))
    assert verbs(list(rebuilt.actions)) == [("delete-cluster", name), ("create-cluster", name)]
    assert rebuilt.state.publishes(extra, "TCP") and rebuilt.state.owned
    assert set(node_ids(name)).isdisjoint(rec.node_ids)

    # down --delete-cluster: ours, so deleted, with its state; a repeat is a no-op.
    assert verbs(asyncio.run(cluster.delete_cluster(wider))) == [("delete-cluster", name)]
    assert node_ids(name) == [] and not cluster.cluster_dir(name).exists()
    assert asyncio.run(cluster.delete_cluster(wider)) == []


def test_a_killed_create_is_rebuilt(kind_cli: Any, kind_log: KindLog) -> None:
    name = kind_cli.new_name()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name)

    async def create_then_kill() -> None:
        task = asyncio.create_task(cluster.ensure_cluster(spec))
        while not await cluster.list_nodes(name):
            assert not task.done(), task
            await asyncio.sleep(0.1)
        (pid,) = [pid for pid, args in kind_log.calls() if args[:2] == ["create", "cluster"]]
        os.killpg(pid, signal.SIGKILL)  # as ansible kills the whole process group
        with pytest.raises(ClusterError, match=f"cluster {name}: kind create failed"):
            await task

    asyncio.run(create_then_kill())
    assert name in kind_cli.clusters()  # kind still lists the half-made cluster
    half = asyncio.run(cluster.observe_cluster(spec))
    assert half.owned and half.unfinished
    assert "laconic-helm's create of it never finished" in half.problems

    rebuilt = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(rebuilt.actions)) == [("delete-cluster", name), ("create-cluster", name)]
    assert rebuilt.state.api_ready and rebuilt.state.problems == ()
    rec = cluster.read_record(name)
    assert rec is not None and rec.status == "created"


def test_a_cluster_made_by_someone_else(kind_cli: Any, tmp_path: Path) -> None:
    name = kind_cli.new_name()
    config = tmp_path / "kind.yaml"
    config.write_text(
        cluster.render_kind_config(make_cluster(**kind_cli.cluster_fields(), name=name))
    )
    kind_cli.run("create", "cluster", "--name", name, "--config", str(config))
    before = node_ids(name)

    # As specified and healthy: used as it is, and still not ours.
    fits = make_cluster(**kind_cli.cluster_fields(), name=name)
    used = asyncio.run(cluster.ensure_cluster(fits))
    assert used.actions == () and not used.state.owned

    # A change is needed: refused even with --recreate-cluster, and nothing is deleted.
    port = free_port()
    clash = make_cluster(**kind_cli.cluster_fields(), name=name, ports=[local_port(80, port)])
    with pytest.raises(UserError) as caught:
        asyncio.run(cluster.ensure_cluster(clash, recreate=True))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"cluster {name}: differs from the spec (host port {port}/TCP is not published (spec: "
        f"127.0.0.1:{port} -> node port 80)) and laconic-helm has no record of creating it, "
        "so laconic-helm will not change it"
    )
    with pytest.raises(UserError, match="will not delete it"):
        asyncio.run(cluster.delete_cluster(fits))
    assert node_ids(name) == before

    # --adopt-cluster makes it ours; from then on it may be deleted.
    adopted = asyncio.run(cluster.ensure_cluster(fits, adopt=True))
    assert verbs(list(adopted.actions)) == [("adopt-cluster", name)]
    assert asyncio.run(cluster.observe_cluster(fits)).owned
    assert verbs(asyncio.run(cluster.delete_cluster(fits))) == [("delete-cluster", name)]
    assert node_ids(name) == []


def test_a_port_held_by_another_process_stops_before_any_change(
    kind_cli: Any, kind_log: KindLog
) -> None:
    name = kind_cli.new_name()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = make_cluster(
            **kind_cli.cluster_fields(),
            name=name,
            ports=[local_port(80, free_port()), local_port(443, port)],
        )
        with pytest.raises(UserError) as caught:
            asyncio.run(cluster.ensure_cluster(spec))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"cluster.ports[1]: host port {port}/TCP on 127.0.0.1 is in use by another process"
    )
    assert kind_log.verbs() == [] and node_ids(name) == []
    assert not cluster.record_path(name).exists()


def test_a_missing_mount_source_stops_before_any_change(
    kind_cli: Any, kind_log: KindLog, tmp_path: Path
) -> None:
    name = kind_cli.new_name()
    gone = tmp_path / "no-ledger"
    spec = make_cluster(
        **kind_cli.cluster_fields(),
        name=name,
        mounts=[{"hostPath": str(gone), "containerPath": "/mnt"}],
    )
    with pytest.raises(UserError) as caught:
        asyncio.run(cluster.ensure_cluster(spec))
    assert caught.value.message == f"cluster.mounts[0].hostPath: {gone} does not exist"
    assert kind_log.verbs() == [] and node_ids(name) == []


def test_an_existing_cluster_is_only_checked(
    kube_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    spec = make_cluster(provider="existing", context=kube_api.context)
    result = asyncio.run(cluster.ensure_cluster(spec))
    assert result.actions == () and result.state.api_ready and result.state.problems == ()
    assert result.access == cluster.ClusterAccess(None, kube_api.context)

    elsewhere = make_cluster(provider="existing", context="no-such-context")
    with pytest.raises(UserError, match=r"^cluster\.context: context 'no-such-context' is not in"):
        asyncio.run(cluster.ensure_cluster(elsewhere))


def test_the_record_kept_in_the_cluster_survives_the_state_folder(
    kind_cli: Any, kind_log: KindLog, state_home: Path
) -> None:
    name = kind_cli.new_name()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name)
    first = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(first.actions)) == [("create-cluster", name)]
    made = cluster.read_record(name)

    async def kept() -> Record | None:
        from laconic_helm.kube import Kube

        access = first.access
        return await cluster.read_cluster_record(Kube.connect(access.kubeconfig, access.context))

    assert asyncio.run(kept()) == made

    # Another user's run, or this host's state folder lost: the cluster itself says it is ours.
    shutil.rmtree(state_home)
    state = asyncio.run(cluster.observe_cluster(spec))
    assert state.owned and state.ownership.endswith("(its record in it)")
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and again.state.owned
    assert cluster.read_record(name) == made  # restored from the cluster
    assert verbs(asyncio.run(cluster.delete_cluster(spec))) == [("delete-cluster", name)]


@pytest.mark.unit
@pytest.mark.skipif(os.geteuid() != 0, reason="the system location is root's")
def test_root_moves_its_per_user_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "xdg" / "laconic-helm" / "clusters" / "lh"
    old.mkdir(parents=True)
    (old / "record.json").write_text("{}")
    (old / "kubeconfig").write_text("k")
    (old / paths.MEMLOCK_SPEC_NAME).write_text("spec")
    monkeypatch.delenv("LACONIC_HELM_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(paths, "SYSTEM_STATE", tmp_path / "var-lib")

    assert paths.state_dir() == tmp_path / "var-lib"
    new = tmp_path / "var-lib" / "clusters" / "lh"
    assert sorted(p.name for p in new.iterdir()) == sorted(
        ["kubeconfig", "record.json", paths.MEMLOCK_SPEC_NAME]
    )
    # The node created then mounts the spec from the old folder: it stays there too.
    assert [p.name for p in old.iterdir()] == [paths.MEMLOCK_SPEC_NAME]
    assert f"moved the records of cluster lh from {old}" in caplog.text
    caplog.clear()
    paths.state_dir()
    assert "moved" not in caplog.text
