"""Checks of the host before anything changes: tools, host ports, mount sources, kube context.

Each `check_*` raises with one line naming the spec key or object and what is expected; none has
a side effect, so a refused deploy leaves everything as it found it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from laconic_helm import docker, tools
from laconic_helm.cluster.access import server_port
from laconic_helm.cluster.nodes import list_nodes
from laconic_helm.cluster.observe import ClusterState
from laconic_helm.errors import ToolMissingError, UserError

if TYPE_CHECKING:
    from laconic_helm.spec import Cluster, Spec

MIN_KIND = (0, 17)  # node `labels` in the kind config
_SOCKET_TYPES = {
    "TCP": (socket.SOCK_STREAM, 0),
    "UDP": (socket.SOCK_DGRAM, 0),
    "SCTP": (socket.SOCK_SEQPACKET, getattr(socket, "IPPROTO_SCTP", 132)),
}
_TCP_LISTEN = "0A"


async def check_tools(cluster: Cluster) -> None:
    """Raises ToolMissingError unless docker answers and (for kind) kind is new enough."""
    daemon = await tools.check_docker()
    if not daemon.ok:
        raise ToolMissingError(f"docker: {daemon.detail}")
    if cluster.provider != "kind":
        return
    found = await tools.check_kind()
    if not found.ok:
        raise ToolMissingError(f"kind: {found.detail}")
    match = re.search(r"v(\d+)\.(\d+)", found.version or "")
    if match is None or (int(match[1]), int(match[2])) < MIN_KIND:
        raise ToolMissingError(
            f"kind {found.version}: laconic-helm needs kind v{MIN_KIND[0]}.{MIN_KIND[1]}.0 or "
            "newer (node labels in the cluster config)"
        )


def check_mount_sources(cluster: Cluster) -> None:
    """Raises UserError unless every mount's host path is an existing folder."""
    if cluster.provider != "kind":
        return
    for i, m in enumerate(cluster.mounts):
        where = f"cluster.mounts[{i}].hostPath"
        if not m.host_path.exists():
            raise UserError(
                f"{where}: {m.host_path} does not exist",
                hint="create the folder, or fix the path",
            )
        if not m.host_path.is_dir():
            raise UserError(f"{where}: {m.host_path} is not a folder")


def _listed_in_proc(port: int, protocol: str) -> bool:
    """True when the kernel's socket tables show `port` in use (a TCP listener, or a UDP bind).

    Used only where binding is not allowed (ports below 1024 without privilege).
    """
    tables = {"TCP": ("tcp", "tcp6"), "UDP": ("udp", "udp6")}.get(protocol, ())
    for table in tables:
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rpartition(":")[2], 16) != port:
                continue
            if protocol == "UDP" or state == _TCP_LISTEN:
                return True
    return False


def port_in_use(address: str, port: int, protocol: str) -> bool | None:
    """Returns whether `address:port/protocol` is taken on this host; None if it cannot tell.

    It tries to bind the port as docker will; SO_REUSEADDR (TCP only) so that connections
    lingering in TIME_WAIT do not count as a holder.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock_type, proto = _SOCKET_TYPES[protocol]
    try:
        sock = socket.socket(family, sock_type, proto)
    except OSError:
        return None  # e.g. no SCTP in this kernel
    with sock:
        if protocol == "TCP":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            if exc.errno == errno.EACCES:
                return _listed_in_proc(port, protocol)
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"listen address {address} is not an address of this host"
                ) from None
            raise
    return False


async def _holder(port: int, protocol: str) -> str:
    """Names the container publishing `port`, when a container is what holds it."""
    done = await docker.run(
        "ps", "--filter", f"publish={port}/{protocol.lower()}",
        "--format", f"{{{{.Names}}}}\t{docker.label_format(docker.CLUSTER_LABEL)}",
        check=False,
    )  # fmt: skip
    if done.returncode != 0 or not done.text.strip():
        return "another process"
    name, _, cluster_name = done.text.splitlines()[0].partition("\t")
    owner = f" of kind cluster {cluster_name}" if cluster_name else ""
    return f"container {name}{owner}"


async def check_ports(cluster: Cluster, state: ClusterState) -> None:
    """Raises UserError unless each host port is free or published by this cluster's own nodes.

    A port this cluster publishes passes here even if its address differs from the spec's;
    the compatibility check names that difference.
    """
    if cluster.provider != "kind":
        return
    for i, p in enumerate(cluster.ports):
        if state.publishes(p.host_port, p.protocol):
            continue
        try:
            taken = port_in_use(p.listen_address, p.host_port, p.protocol)
        except UserError as exc:
            raise UserError(f"cluster.ports[{i}].listenAddress: {exc.message}") from None
        if taken:
            holder = await _holder(p.host_port, p.protocol)
            raise UserError(
                f"cluster.ports[{i}]: host port {p.host_port}/{p.protocol} on "
                f"{p.listen_address} is in use by {holder}",
                hint="free it, or choose another hostPort",
            )


async def check_registry_port(spec: Spec) -> None:
    """Raises UserError when the local registry's host port is held by anything but the
    registry container itself (registry mode on kind)."""
    if not spec.images or spec.delivery_mode != "registry" or spec.image_delivery.external:
        return
    if spec.cluster.provider != "kind":
        return
    port = spec.image_delivery.local.port
    if not port_in_use("127.0.0.1", port, "TCP"):
        return
    holder = await _holder(port, "TCP")
    if holder != f"container {spec.cluster.name}-registry":
        raise UserError(
            f"imageDelivery.local.port: host port {port}/TCP on 127.0.0.1 is in use by {holder}",
            hint="free it, or choose another port",
        )


def kubeconfig_files() -> list[Path]:
    """Returns the kubeconfig files kubectl would read: $KUBECONFIG's list, else ~/.kube/config."""
    listed = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path.home() / ".kube" / "config"]


def read_context_servers(files: list[Path]) -> dict[str, tuple[str | None, Path]]:
    """Returns each context's API server URL and the file defining it (first file wins)."""
    found: dict[str, tuple[str | None, Path]] = {}
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        servers = {
            c.get("name"): (c.get("cluster") or {}).get("server")
            for c in doc.get("clusters") or ()
            if isinstance(c, dict)
        }
        for c in doc.get("contexts") or ():
            if isinstance(c, dict) and c.get("name") not in found:
                cluster_name = (c.get("context") or {}).get("cluster")
                found[c["name"]] = (servers.get(cluster_name), path)
    return found


def _check_points_at(context: str, server: str | None, where: Path, state: ClusterState) -> None:
    api = state.api_endpoint
    if api is None or server is None:
        return
    if server_port(server) != api.host_port:
        raise UserError(
            f"kube context {context} in {where} points at {server}, not at kind cluster "
            f"{state.name}'s API ({api.host_ip}:{api.host_port})",
            hint=f"kind export kubeconfig --name {state.name} repairs it",
        )


async def check_context(
    cluster: Cluster, state: ClusterState, *, files: list[Path] | None = None
) -> None:
    """Raises UserError unless the kube context belongs to the spec's cluster.

    kind: a `context` in the spec must be kind-<name>, and where the operator's kubeconfig has
    that context it must reach this cluster's published API port. existing: the context must
    be in the kubeconfig, and if it is a kind context of this host, reach that cluster.
    """
    files = files if files is not None else kubeconfig_files()
    contexts = read_context_servers(files)
    if cluster.provider == "kind":
        expected = f"kind-{cluster.name}"
        if cluster.context not in (None, expected):
            raise UserError(
                f"cluster.context: {cluster.context!r} is not the context of kind cluster "
                f"{cluster.name!r} (that is {expected!r})",
                hint="leave cluster.context out for kind clusters",
            )
        if expected in contexts and state.exists:
            server, where = contexts[expected]
            _check_points_at(expected, server, where, state)
        return
    context = cluster.kube_context
    if context not in contexts:
        shown = ", ".join(str(f) for f in files)
        raise UserError(f"cluster.context: context {context!r} is not in the kubeconfig ({shown})")
    server, where = contexts[context]
    if context.startswith("kind-"):
        nodes = await list_nodes(context.removeprefix("kind-"))
        if nodes:
            other = ClusterState(context.removeprefix("kind-"), nodes=tuple(nodes))
            _check_points_at(context, server, where, other)


async def check_host(cluster: Cluster, state: ClusterState) -> None:
    """Runs every host check that needs the observed cluster: mounts, ports, context."""
    check_mount_sources(cluster)
    await check_ports(cluster, state)
    await check_context(cluster, state)
