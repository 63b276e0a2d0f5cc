"""A kind cluster's node containers as docker shows them: what they publish, mount and run.

Docker, not the API, is the ground truth for what kind fixed at creation (ports, mounts, image),
and it still answers when the cluster's API does not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from laconic_helm import docker

if TYPE_CHECKING:
    from collections.abc import Iterable

API_PORT = 6443  # the API server's port inside the control-plane container


@dataclass(frozen=True)
class PortBinding:
    """One published port of a node container, as docker reports it."""

    container_port: int
    protocol: str  # TCP, UDP or SCTP
    host_ip: str  # "0.0.0.0" when docker says "" (all addresses)
    host_port: int

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port} -> node port {self.container_port}"


@dataclass(frozen=True)
class BindMount:
    """One host folder mounted into a node container."""

    source: str
    destination: str
    read_only: bool
    propagation: str  # in kind's terms: None, HostToContainer or Bidirectional


@dataclass(frozen=True)
class Node:
    """One node container of a kind cluster."""

    name: str
    id: str
    role: str
    status: str  # docker's State.Status: running, created, exited, ...
    created: datetime
    started: datetime | None
    image: str
    ports: tuple[PortBinding, ...] = ()
    mounts: tuple[BindMount, ...] = ()

    @property
    def running(self) -> bool:
        return self.status == "running"


def api_binding(ports: Iterable[PortBinding]) -> PortBinding | None:
    """Returns the binding kind made for the API server (node port 6443, TCP), if any."""
    return next((p for p in ports if p.container_port == API_PORT and p.protocol == "TCP"), None)


def parse_time(value: str) -> datetime:
    """Parses docker's and the record's RFC 3339 times (docker gives nanoseconds)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", value)
    if not match:
        raise ValueError(f"not a timestamp: {value!r}")
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match[3] in (None, "Z") else match[3]
    return datetime.fromisoformat(f"{match[1]}.{fraction}{zone}")


_PROPAGATION = {
    "": "None",
    "private": "None",
    "rprivate": "None",
    "slave": "HostToContainer",
    "rslave": "HostToContainer",
    "shared": "Bidirectional",
    "rshared": "Bidirectional",
}


def parse_node(doc: dict[str, Any]) -> Node:
    """Builds a Node from one `docker inspect` document.

    Port bindings come from the container's configuration, not its live network state, so a
    stopped node still shows what it publishes.
    """
    ports = []
    for key, bindings in sorted((doc.get("HostConfig", {}).get("PortBindings") or {}).items()):
        number, _, proto = key.partition("/")
        for b in bindings or ():
            if not b.get("HostPort"):
                continue
            ports.append(
                PortBinding(
                    container_port=int(number),
                    protocol=(proto or "tcp").upper(),
                    host_ip=b.get("HostIp") or "0.0.0.0",
                    host_port=int(b["HostPort"]),
                )
            )
    mounts = [
        BindMount(
            source=m["Source"],
            destination=m["Destination"],
            read_only=not m.get("RW", True),
            propagation=_PROPAGATION.get(m.get("Propagation", ""), m.get("Propagation", "")),
        )
        for m in doc.get("Mounts") or ()
        if m.get("Type") == "bind"
    ]
    state = doc.get("State", {})
    started_at = state.get("StartedAt", "")
    started = parse_time(started_at) if started_at else None
    labels = doc.get("Config", {}).get("Labels") or {}
    return Node(
        name=doc["Name"].lstrip("/"),
        id=doc["Id"],
        role=labels.get(docker.ROLE_LABEL, ""),
        status=state.get("Status", "unknown"),
        created=parse_time(doc["Created"]),
        started=started if started and started.year > 1 else None,
        image=doc.get("Config", {}).get("Image", ""),
        ports=tuple(ports),
        mounts=tuple(sorted(mounts, key=lambda m: m.destination)),
    )


async def list_nodes(name: str) -> list[Node]:
    """Returns the node containers labelled as cluster `name` (kind's own label), any state."""
    ids = await docker.node_containers(name, "{{.ID}}")
    if not ids:
        return []
    # A node can go between the listing and the inspection (kind, or a killed kind's docker run,
    # still at work): docker then prints the others and names the missing one.
    done = await docker.run("inspect", *ids, check=False)
    said = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    if done.returncode != 0 and not all("No such object" in line for line in said):
        done = await docker.run("inspect", *ids)  # the error, typed
    found = json.loads(done.stdout or b"[]")
    return sorted((parse_node(d) for d in found), key=lambda n: n.name)
