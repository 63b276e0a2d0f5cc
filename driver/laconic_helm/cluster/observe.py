"""What is there: a read-only picture of one cluster (nodes, ownership, health, API).

`observe_cluster` only reads: docker inspect of the node containers, `kind get kubeconfig` when
the driver's own copy no longer reaches the API, and one API request. It writes nothing, not
even the kubeconfig, so a plan or a refused deploy leaves every file as it was.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from laconic_helm.cluster.access import (
    cached_kubeconfig,
    kind_kubeconfig,
    kubeconfig_server,
    server_port,
)
from laconic_helm.cluster.memlock import node_runs_memlock
from laconic_helm.cluster.nodes import Node, PortBinding, api_binding, list_nodes
from laconic_helm.cluster.record import Record, judge_ownership, read_cluster_record, read_record
from laconic_helm.errors import ClusterError
from laconic_helm.kube import Kube, ObjectRef

if TYPE_CHECKING:
    from laconic_helm.spec import Cluster

_API_WAIT = 5.0  # seconds a settled API may take to answer before it counts as down
# A node started this recently may still be booting its API (minutes on a loaded host); the
# wait ends as soon as it answers, so the ceiling costs nothing when all is well.
_API_WAIT_AFTER_START = 300.0


@dataclass(frozen=True)
class ClusterState:
    """A read-only picture of one cluster, enough to plan and to report status."""

    name: str
    provider: Literal["kind", "existing"] = "kind"
    nodes: tuple[Node, ...] = ()
    record: Record | None = None
    owned: bool = False
    ownership: str = ""  # why the cluster is (not) ours, in words for messages
    kubeconfig: str | None = None  # `kind get kubeconfig` output (never logged)
    problems: tuple[str, ...] = ()  # why it is not healthy; empty when it is
    api_ready: bool = False
    node_labels: dict[str, str] | None = None  # from the API's Node; None when unknown
    memlock_runtime: bool | None = None  # None when not looked at
    host_ports: frozenset[tuple[int, str]] = field(default_factory=frozenset)

    @property
    def exists(self) -> bool:
        return bool(self.nodes)

    @property
    def control_plane(self) -> Node | None:
        return next((n for n in self.nodes if n.role == "control-plane"), None)

    @property
    def stopped_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.running)

    @property
    def unfinished(self) -> bool:
        """True when this tool's own create never completed (killed or failed half-way)."""
        return self.owned and self.record is not None and self.record.status == "creating"

    @property
    def api_endpoint(self) -> PortBinding | None:
        cp = self.control_plane
        return api_binding(cp.ports) if cp else None

    def publishes(self, host_port: int, protocol: str) -> bool:
        """True when a node of this cluster publishes `host_port`/`protocol` on the host."""
        return (host_port, protocol) in self.host_ports

    def summary(self) -> dict[str, Any]:
        """Returns the state as plain data for `status` and JSON reports (no kubeconfig)."""
        return {
            "name": self.name,
            "provider": self.provider,
            "exists": self.exists,
            "owned": self.owned,
            "ownership": self.ownership,
            "api_ready": self.api_ready,
            "problems": list(self.problems),
            "nodes": [
                {"name": n.name, "role": n.role, "status": n.status, "image": n.image}
                for n in self.nodes
            ],
        }


def stopped_problem(node: Node) -> str:
    """The problem a stopped node adds; planning knows a merely stopped cluster by this text."""
    return f"node {node.name} is {node.status}, not running"


async def _probe_api(
    kubeconfig: str | None, context: str, node: str | None, *, wait: float, record: bool = False
) -> tuple[str | None, dict[str, Any] | None, Record | None]:
    """Asks the API for the Node `node`, or only for discovery when `node` is None (any user
    may read that), and for the record kept in the cluster when `record`; returns (error or
    None, the Node or None, the record or None), retrying for `wait` seconds.

    The kubeconfig text goes to a private temporary file, never to the state folder: observing
    writes nothing.
    """
    with tempfile.TemporaryDirectory(prefix="laconic-helm-") as tmp:
        # The client fixes its default file list when first imported; read $KUBECONFIG now.
        listed = os.environ.get("KUBECONFIG")
        path = Path(listed) if listed else None
        if kubeconfig is not None:
            path = Path(tmp) / "kubeconfig"
            path.touch(mode=0o600)
            path.write_text(kubeconfig)
        deadline = time.monotonic() + wait
        while True:
            try:
                client = Kube.connect(path, context)
                if node is None:
                    await client.resource("v1", "Node")
                    return None, None, None
                found = await client.get_object(ObjectRef("v1", "Node", node))
                kept = await read_cluster_record(client) if record else None
                return None, found, kept
            except ClusterError as exc:
                if time.monotonic() >= deadline:
                    return exc.message, None, None
            await asyncio.sleep(1.0)


async def observe_cluster(cluster: Cluster) -> ClusterState:
    """Returns what is there for `cluster`: nodes, ownership, health; changes nothing."""
    if cluster.provider == "existing":
        error, _, _ = await _probe_api(None, cluster.kube_context, None, wait=_API_WAIT)
        problems = (f"the API does not answer: {error}",) if error else ()
        return ClusterState(
            cluster.name, "existing", problems=problems, api_ready=error is None,
            ownership="provider existing: laconic-helm never creates or deletes it",
        )  # fmt: skip
    nodes = await list_nodes(cluster.name)
    record = read_record(cluster.name)
    host_ports = frozenset((p.host_port, p.protocol) for n in nodes for p in n.ports)
    if not nodes:
        return ClusterState(cluster.name, record=record, ownership="absent")
    owned, why = judge_ownership(record, nodes)
    problems: list[str] = []
    if owned and record is not None and record.status == "creating":
        problems.append("laconic-helm's create of it never finished")
    if record is not None and owned and record.status != "creating":
        gone = len(set(record.node_ids) - {n.id for n in nodes})
        if gone:
            problems.append(f"{gone} of its recorded node containers are gone")
    cp = next((n for n in nodes if n.role == "control-plane"), None)
    if cp is None:
        problems.append("it has no control-plane node container")
    problems += [stopped_problem(n) for n in nodes if not n.running]
    state = ClusterState(
        cluster.name, nodes=tuple(nodes), record=record, owned=owned, ownership=why,
        host_ports=host_ports,
    )  # fmt: skip
    if problems or cp is None:
        return replace(state, problems=tuple(problems))
    api = api_binding(cp.ports)
    # Our own cluster answering with the copy we keep needs no kind call (the common re-run).
    cached = cached_kubeconfig(cluster.name, api) if owned else None
    if cached is not None:
        error, node, _ = await _probe_api(cached, f"kind-{cluster.name}", cp.name, wait=0)
        if error is None:
            return replace(
                state, kubeconfig=cached, api_ready=True, node_labels=_labels(node),
                memlock_runtime=await node_runs_memlock(cp.name) if cluster.high_memlock else None,
            )  # fmt: skip
    kubeconfig, error = await kind_kubeconfig(cluster.name)
    if kubeconfig is None:
        problems.append(f"`kind get kubeconfig` fails: {error}")
        return replace(state, problems=tuple(problems))
    server = kubeconfig_server(kubeconfig, f"kind-{cluster.name}")
    if server is None:
        problems.append(f"its kubeconfig has no context kind-{cluster.name}")
    elif api is not None and server_port(server) != api.host_port:
        problems.append(f"its kubeconfig points at {server}, but its API is published on {api}")
    wait = _API_WAIT
    if cp.started is not None:
        since = (datetime.now(UTC) - cp.started).total_seconds()
        wait = max(wait, _API_WAIT_AFTER_START - since)
    error, node, kept = await _probe_api(
        kubeconfig, f"kind-{cluster.name}", cp.name, wait=wait, record=record is None
    )
    if error:
        problems.append(f"its API does not answer: {error}")
    if kept is not None:  # this state folder has no record of it: the cluster's own decides
        owned, why = judge_ownership(kept, nodes)
        state = replace(state, record=kept, owned=owned, ownership=f"{why} (its record in it)")
    memlock = await node_runs_memlock(cp.name) if cluster.high_memlock else None
    return replace(
        state, kubeconfig=kubeconfig, problems=tuple(problems), api_ready=error is None,
        node_labels=_labels(node), memlock_runtime=memlock,
    )  # fmt: skip


def _labels(node: dict[str, Any] | None) -> dict[str, str] | None:
    return dict(node.get("metadata", {}).get("labels") or {}) if node else None
