"""The kind cluster: its config, what is there, what must change, and making that change.

`observe_cluster` only reads (docker inspect of the node containers, `kind get kubeconfig`, one
API request); `plan_cluster` is pure; `apply_cluster` re-checks before each change. Ports, mounts,
the node image and the containerd runtime are fixed when kind creates a cluster, so a cluster that
differs is never patched: it is rebuilt, and only when this tool created it and the operator asked.

Ownership is a record under the state folder written *before* `kind create` runs and completed
after it, so even a create killed half-way is known to be ours. Once the cluster answers, the
record is also kept in it (ConfigMap kube-system/laconic-helm-cluster), so another user's run, or
one after the state folder was lost, still knows the cluster as ours. A cluster with no record,
or whose node containers are not the recorded ones, belongs to someone else and is never deleted
or rebuilt without an explicit flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from laconic_helm import __version__, docker, paths, proc
from laconic_helm.errors import ClusterError, CommandError, UserError
from laconic_helm.kube import ObjectRef
from laconic_helm.plan import Action
from laconic_helm.tools import tool_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from laconic_helm.kube import Kube
    from laconic_helm.spec import Cluster

log = logging.getLogger(__name__)

STEP = "cluster"
API_PORT = 6443  # the API server's port inside the control-plane container
KIND_CONFIG_API = "kind.x-k8s.io/v1alpha4"
MEMLOCK_RUNTIME = "high-memlock"  # containerd runtime name = RuntimeClass name and handler
MEMLOCK_SPEC_IN_NODE = "/etc/laconic-helm/high-memlock-spec.json"
RLIM_INFINITY = 2**64 - 1
MEMLOCK_NOFILE = 1048576
_API_WAIT = 5.0  # seconds a settled API may take to answer before it counts as down
# A node started this recently may still be booting its API (minutes on a loaded host); the
# wait ends as soon as it answers, so the ceiling costs nothing when all is well.
_API_WAIT_AFTER_START = 300.0
_RECORD_VERSION = 1
# The copy of the ownership record kept in the cluster; it goes when the cluster goes.
CLUSTER_RECORD = ObjectRef("v1", "ConfigMap", "laconic-helm-cluster", "kube-system")
_SYSTEM_NAMESPACE_WAIT = 60.0  # seconds a new API server may take to create kube-system
_RECORD_KEY = "record.json"

RecordStatus = Literal["creating", "created", "adopted"]


# -- the kind config -----------------------------------------------------------------------


def cluster_dir(name: str) -> Path:
    """Returns the state folder of cluster `name`: record, kind config, kubeconfig (0700)."""
    return paths.state_dir() / "clusters" / name


def kubeconfig_path(name: str) -> Path:
    """Returns where the driver keeps kind cluster `name`'s kubeconfig (context kind-<name>)."""
    return cluster_dir(name) / "kubeconfig"


def memlock_spec_path(name: str) -> Path:
    """Returns the host file holding the high-memlock runtime's base OCI spec for `name`."""
    return cluster_dir(name) / paths.MEMLOCK_SPEC_NAME


def memlock_base_spec() -> dict[str, Any]:
    """Returns the base OCI spec of the high-memlock runtime: runc's defaults, rlimits raised.

    Kubernetes has no pod field for rlimits; containerd starts every container of a runtime from
    its base spec, so this is where memlock and open files are raised for the pods that ask.
    """
    caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    nsd = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [
                {"type": "RLIMIT_MEMLOCK", "hard": RLIM_INFINITY, "soft": RLIM_INFINITY},
                {"type": "RLIMIT_NOFILE", "hard": MEMLOCK_NOFILE, "soft": MEMLOCK_NOFILE},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": dest, "type": kind, "source": source, "options": options}
            for dest, kind, source, options in (
                ("/proc", "proc", "proc", nsd),
                ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                (
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
                ),
                ("/dev/shm", "tmpfs", "shm", [*nsd, "mode=1777", "size=65536k"]),
                ("/dev/mqueue", "mqueue", "mqueue", nsd),
                ("/sys", "sysfs", "sysfs", [*nsd, "ro"]),
                ("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            )
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": "/default",
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def memlock_containerd_patch() -> str:
    """Returns the containerd config patch adding the high-memlock runtime (config version 2).

    systemd cgroups as kind's own runc runtime uses, or the kubelet could not place its pods.
    """
    table = f'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{MEMLOCK_RUNTIME}'
    return (
        f"[{table}]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f'  base_runtime_spec = "{MEMLOCK_SPEC_IN_NODE}"\n'
        f"[{table}.options]\n"
        "  SystemdCgroup = true\n"
    )


def runtime_class_manifest() -> dict[str, Any]:
    """Returns the RuntimeClass that lets pods opt into the high-memlock runtime."""
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {
            "name": MEMLOCK_RUNTIME,
            "labels": {"app.kubernetes.io/managed-by": "laconic-helm"},
        },
        "handler": MEMLOCK_RUNTIME,
    }


def _runtime_class_ref() -> ObjectRef:
    return ObjectRef("node.k8s.io/v1", "RuntimeClass", MEMLOCK_RUNTIME, None)


async def observe_runtime_class(k: Kube) -> dict[str, Any] | None:
    """Returns the live high-memlock RuntimeClass, or None when there is none."""
    return await k.get_object(_runtime_class_ref())


def plan_runtime_class(cluster: Cluster, live: dict[str, Any] | None) -> list[Action]:
    """Pods ask for the high-memlock runtime by this RuntimeClass; the API refuses a pod that
    names one that does not exist. One with another handler would run them elsewhere: refused."""
    if not cluster.high_memlock:
        return []
    if live is None:
        return [Action(STEP, "create-runtime-class", MEMLOCK_RUNTIME, f"handler {MEMLOCK_RUNTIME}")]
    if live.get("handler") != MEMLOCK_RUNTIME:
        raise ClusterError(
            f"RuntimeClass {MEMLOCK_RUNTIME}: handler {live.get('handler')!r}, expected "
            f"{MEMLOCK_RUNTIME!r}; it was not made by this tool (a handler cannot be changed)"
        )
    return []


async def ensure_runtime_class(cluster: Cluster, k: Kube) -> list[Action]:
    """Creates the high-memlock RuntimeClass when the spec asks for the runtime and it is
    missing; a re-run only reads it."""
    if not cluster.high_memlock:
        return []
    actions = plan_runtime_class(cluster, await observe_runtime_class(k))
    if actions:
        await k.create_object(_runtime_class_ref(), runtime_class_manifest())
    return actions


def kind_config(cluster: Cluster, *, memlock_spec: Path | None = None) -> dict[str, Any]:
    """Returns the kind config for `cluster`: one control-plane node, keys in a fixed order.

    Node labels use kind's own `labels` field rather than a kubeadm patch: kubeadm v1beta4
    (Kubernetes 1.36+, kind's default node) takes kubelet flags as a list, not a map.
    `memlock_spec` is the host file mounted as the high-memlock runtime's base spec.
    """
    node: dict[str, Any] = {"role": "control-plane"}
    if cluster.node_image:
        node["image"] = cluster.node_image
    if cluster.node_labels:
        node["labels"] = dict(sorted(cluster.node_labels.items()))
    if cluster.ports:
        node["extraPortMappings"] = [
            {
                "containerPort": p.container_port,
                "hostPort": p.host_port,
                "listenAddress": p.listen_address,
                "protocol": p.protocol,
            }
            for p in cluster.ports
        ]
    mounts = [
        {
            "hostPath": str(m.host_path),
            "containerPath": m.container_path,
            "readOnly": m.read_only,
            "propagation": m.propagation,
        }
        for m in cluster.mounts
    ]
    if cluster.high_memlock:
        if memlock_spec is None:
            raise ValueError("high_memlock needs the host path of the runtime's base spec")
        mounts.append(
            {
                "hostPath": str(memlock_spec),
                "containerPath": MEMLOCK_SPEC_IN_NODE,
                "readOnly": True,
                "propagation": "None",
            }
        )
    if mounts:
        node["extraMounts"] = mounts
    doc: dict[str, Any] = {"kind": "Cluster", "apiVersion": KIND_CONFIG_API, "name": cluster.name}
    logs = {
        "kind": "KubeletConfiguration",
        "containerLogMaxSize": cluster.container_logs.max_size,
        "containerLogMaxFiles": cluster.container_logs.max_files,
    }
    doc["kubeadmConfigPatches"] = [
        yaml.safe_dump(patch, sort_keys=False) for patch in (logs, *cluster.kind_patches.kubeadm)
    ]
    containerd = [memlock_containerd_patch()] if cluster.high_memlock else []
    containerd += cluster.kind_patches.containerd
    if containerd:
        doc["containerdConfigPatches"] = containerd
    doc["nodes"] = [node]
    return doc


def patches_digest(cluster: Cluster) -> str:
    """A digest of the spec's kind patches ("" for none), kept in the ownership record: the
    node cannot be asked which patches it was created with, and they are fixed from then on."""
    if not cluster.kind_patches:
        return ""
    text = json.dumps(cluster.kind_patches.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the containerd patch) as literal blocks, for people to read."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def render_kind_config(cluster: Cluster, *, memlock_spec: Path | None = None) -> str:
    """Returns the kind config as YAML; equal specs give byte-equal text."""
    doc = kind_config(cluster, memlock_spec=memlock_spec)
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


# -- the ownership record ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What this tool knows about a cluster it created (or was told to adopt)."""

    name: str
    status: RecordStatus
    started_at: str  # UTC ISO time just before `kind create` ran (or of the adoption)
    node_ids: tuple[str, ...] = ()  # full docker IDs of the nodes once created
    config_sha256: str = ""
    patches_sha256: str = ""
    tool_version: str = __version__
    version: int = _RECORD_VERSION

    @property
    def started(self) -> datetime:
        return _parse_time(self.started_at)


def record_path(name: str) -> Path:
    return cluster_dir(name) / "record.json"


def read_record(name: str) -> Record | None:
    """Returns the record of cluster `name`, or None when there is none (or it is unreadable)."""
    try:
        text = record_path(name).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: unreadable cluster record (%s)", record_path(name), exc)
        return None
    return _parse_record(text, str(record_path(name)))


def _parse_record(text: str, where: str) -> Record | None:
    try:
        doc = json.loads(text)
        return Record(
            name=doc["name"],
            status=doc["status"],
            started_at=doc["started_at"],
            node_ids=tuple(doc.get("node_ids", ())),
            config_sha256=doc.get("config_sha256", ""),
            patches_sha256=doc.get("patches_sha256", ""),
            tool_version=doc.get("tool_version", ""),
            version=int(doc.get("version", _RECORD_VERSION)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        # A damaged record proves nothing: the cluster is then treated as not ours.
        log.warning("%s: unreadable cluster record (%s)", where, exc)
        return None


def _record_text(record: Record) -> str:
    return json.dumps(asdict(record), indent=2, sort_keys=True) + "\n"


def write_record(record: Record) -> None:
    paths.write_private(record_path(record.name), _record_text(record).encode())


def record_manifest(record: Record) -> dict[str, Any]:
    """Returns the ConfigMap holding `record` in the cluster itself."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CLUSTER_RECORD.name,
            "namespace": CLUSTER_RECORD.namespace,
            "labels": {"app.kubernetes.io/managed-by": "laconic-helm"},
        },
        "data": {_RECORD_KEY: _record_text(record)},
    }


async def read_cluster_record(k: Kube) -> Record | None:
    """Returns the record kept in the cluster, or None when there is none (or it is damaged)."""
    live = await k.get_object(CLUSTER_RECORD)
    text = ((live or {}).get("data") or {}).get(_RECORD_KEY)
    return _parse_record(text, f"ConfigMap {CLUSTER_RECORD}") if text else None


async def ensure_records(state: ClusterState, access: ClusterAccess) -> None:
    """Keeps the finished record of a cluster of ours in both places: in the cluster, so other
    users and a rebuilt state folder know it; in the state folder, restored from the cluster."""
    from laconic_helm import kube

    record = state.record
    if not state.owned or record is None or record.status == "creating":
        return
    if read_record(state.name) is None:
        write_record(record)
        log.info("cluster %s: restored its record from the cluster", state.name)
    k = kube.Kube.connect(access.kubeconfig, access.context)
    if await read_cluster_record(k) is None:
        # An API server that has just started creates kube-system a moment after it answers.
        system = kube.ObjectRef("v1", "Namespace", CLUSTER_RECORD.namespace or "kube-system")
        deadline = time.monotonic() + _SYSTEM_NAMESPACE_WAIT
        while await k.get_object(system) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await k.create_object(CLUSTER_RECORD, record_manifest(record))


def forget_cluster(name: str) -> None:
    """Removes the state folder of cluster `name` (record, configs, kubeconfig)."""
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


# -- what is there ---------------------------------------------------------------------------


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


def api_binding(ports: Iterable[PortBinding]) -> PortBinding | None:
    """Returns the binding kind made for the API server (node port 6443, TCP), if any."""
    return next((p for p in ports if p.container_port == API_PORT and p.protocol == "TCP"), None)


def _parse_time(value: str) -> datetime:
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
    started = _parse_time(started_at) if started_at else None
    labels = doc.get("Config", {}).get("Labels") or {}
    return Node(
        name=doc["Name"].lstrip("/"),
        id=doc["Id"],
        role=labels.get(docker.ROLE_LABEL, ""),
        status=state.get("Status", "unknown"),
        created=_parse_time(doc["Created"]),
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


def judge_ownership(record: Record | None, nodes: Sequence[Node]) -> tuple[bool, str]:
    """Decides whether this tool made the cluster whose node containers are `nodes`.

    A finished record owns exactly the containers it lists (a subset may be left after a delete
    was killed). An unfinished record owns containers created after it was written: those are
    the killed create's, while older ones were someone else's before we began.
    """
    if record is None:
        return False, "laconic-helm has no record of creating it"
    if record.status == "creating":
        older = [n.name for n in nodes if n.created < record.started]
        if older:
            return False, (
                f"its node containers ({', '.join(older)}) predate laconic-helm's create "
                f"of {record.started_at}"
            )
        return True, f"laconic-helm began creating it at {record.started_at}"
    ids = {n.id for n in nodes}
    if ids and ids <= set(record.node_ids):
        verb = "adopted" if record.status == "adopted" else "created"
        return True, f"laconic-helm {verb} it at {record.started_at}"
    return False, (
        f"its node containers are not the ones laconic-helm {record.status} at "
        f"{record.started_at} (it was re-made by something else)"
    )


async def _kind_kubeconfig(name: str) -> tuple[str | None, str | None]:
    done = await proc.run([tool_path("kind"), "get", "kubeconfig", "--name", name], check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return None, tail[-1] if tail else f"exit code {done.returncode}"
    return done.text, None


def kubeconfig_server(text: str, context: str) -> str | None:
    """Returns the API server URL that `context` uses in a kubeconfig document, if any."""
    try:
        doc = yaml.safe_load(text) or {}
        ctx = next(c["context"] for c in doc.get("contexts") or () if c["name"] == context)
        cluster = next(
            c["cluster"] for c in doc.get("clusters") or () if c["name"] == ctx["cluster"]
        )
        return str(cluster["server"])
    except (yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        return None


def server_port(url: str) -> int | None:
    match = re.match(r"^\w+://(?:\[[^\]]*\]|[^:/]*)(?::(\d+))?", url)
    if not match:
        return None
    if match[1]:
        return int(match[1])
    return 443 if url.startswith("https") else 80


async def _probe_api(
    kubeconfig: str | None, context: str, node: str | None, *, wait: float, record: bool = False
) -> tuple[str | None, dict[str, Any] | None, Record | None]:
    """Asks the API for the Node `node`, or only for discovery when `node` is None (any user
    may read that), and for the record kept in the cluster when `record`; returns (error or
    None, the Node or None, the record or None), retrying for `wait` seconds.

    The kubeconfig text goes to a private temporary file, never to the state folder: observing
    writes nothing.
    """
    from laconic_helm import kube

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
                client = kube.Kube.connect(path, context)
                if node is None:
                    await client.resource("v1", "Node")
                    return None, None, None
                found = await client.get_object(kube.ObjectRef("v1", "Node", node))
                kept = await read_cluster_record(client) if record else None
                return None, found, kept
            except ClusterError as exc:
                if time.monotonic() >= deadline:
                    return exc.message, None, None
            await asyncio.sleep(1.0)


async def _memlock_runtime(node: str) -> bool | None:
    done = await docker.run("exec", node, "cat", "/etc/containerd/config.toml", check=False)
    if done.returncode != 0:
        return False if "No such file" in done.stderr.decode(errors="replace") else None
    return bool(re.search(rf'runtimes\.(?:"{MEMLOCK_RUNTIME}"|{MEMLOCK_RUNTIME})\]', done.text))


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
    cached = _cached_kubeconfig(cluster.name, api) if owned else None
    if cached is not None:
        error, node, _ = await _probe_api(cached, f"kind-{cluster.name}", cp.name, wait=0)
        if error is None:
            return replace(
                state, kubeconfig=cached, api_ready=True, node_labels=_labels(node),
                memlock_runtime=await _memlock_runtime(cp.name) if cluster.high_memlock else None,
            )  # fmt: skip
    kubeconfig, error = await _kind_kubeconfig(cluster.name)
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
    memlock = await _memlock_runtime(cp.name) if cluster.high_memlock else None
    return replace(
        state, kubeconfig=kubeconfig, problems=tuple(problems), api_ready=error is None,
        node_labels=_labels(node), memlock_runtime=memlock,
    )  # fmt: skip


def _labels(node: dict[str, Any] | None) -> dict[str, str] | None:
    return dict(node.get("metadata", {}).get("labels") or {}) if node else None


def _cached_kubeconfig(name: str, api: PortBinding | None) -> str | None:
    """The driver's copy of the cluster's kubeconfig, if it still points at its API port."""
    try:
        text = kubeconfig_path(name).read_text()
    except OSError:
        return None
    server = kubeconfig_server(text, f"kind-{name}")
    if api is None or server is None or server_port(server) != api.host_port:
        return None
    return text


def stopped_problem(node: Node) -> str:
    return f"node {node.name} is {node.status}, not running"


# -- what must change (pure) ----------------------------------------------------------------


def differences(cluster: Cluster, state: ClusterState) -> list[str]:
    """Returns, one phrase each, how the live cluster differs from the spec; empty if it fits.

    What the spec asks for must be there as asked. Host ports published beyond the spec count
    too (they hold ports the operator thinks free); extra mounts and kind's own do not.
    """
    cp = state.control_plane
    if cp is None:
        return []
    found: list[str] = []
    if cluster.node_image and cp.image != cluster.node_image:
        found.append(f"node image is {cp.image}, the spec asks for {cluster.node_image}")
    wanted_ports = {(p.host_port, p.protocol): p for p in cluster.ports}
    api = api_binding(cp.ports)
    published: dict[tuple[int, str], list[PortBinding]] = {}
    for b in cp.ports:
        if b == api and (b.host_port, b.protocol) not in wanted_ports:
            continue
        published.setdefault((b.host_port, b.protocol), []).append(b)
    for key, p in wanted_ports.items():
        want = f"{p.listen_address}:{p.host_port} -> node port {p.container_port}"
        have = published.get(key, [])
        if not have:
            found.append(f"host port {p.host_port}/{p.protocol} is not published (spec: {want})")
        elif not any(
            b.host_ip == p.listen_address and b.container_port == p.container_port for b in have
        ):
            shown = ", ".join(str(b) for b in have)
            found.append(
                f"host port {p.host_port}/{p.protocol} is published as {shown}; spec: {want}"
            )
    for key, have in sorted(published.items()):
        if key not in wanted_ports:
            shown = ", ".join(str(b) for b in have)
            found.append(f"host port {key[0]}/{key[1]} is published ({shown}) but not in the spec")
    mounts = {m.destination: m for m in cp.mounts}
    for m in cluster.mounts:
        have_mount = mounts.get(m.container_path)
        if have_mount is None:
            found.append(f"mount {m.container_path} is absent (spec: {m.host_path})")
            continue
        if Path(have_mount.source) != Path(m.host_path):
            found.append(
                f"mount {m.container_path} comes from {have_mount.source}, "
                f"the spec asks for {m.host_path}"
            )
        if have_mount.read_only != m.read_only:
            mode = "read-only" if have_mount.read_only else "writable"
            found.append(f"mount {m.container_path} is {mode}, the spec asks for the opposite")
        if have_mount.propagation != m.propagation:
            found.append(
                f"mount {m.container_path} has propagation {have_mount.propagation}, "
                f"the spec asks for {m.propagation}"
            )
    record = state.record  # an adopted cluster's patches are unknown: they are not judged
    if (
        state.owned
        and record is not None
        and record.status != "adopted"
        and record.patches_sha256 != patches_digest(cluster)
    ):
        found.append("the kind patches differ from the ones the cluster was created with")
    if cluster.high_memlock and state.memlock_runtime is False:
        found.append(f"the containerd runtime {MEMLOCK_RUNTIME} is not configured in the node")
    if state.node_labels is not None:
        for key, value in sorted(cluster.node_labels.items()):
            have_label = state.node_labels.get(key)
            if have_label is None:
                found.append(f"node label {key}={value} is missing")
            elif have_label != value:
                found.append(f"node label {key} is {have_label!r}, the spec asks for {value!r}")
    return found


def _create(cluster: Cluster) -> Action:
    parts = [f"{len(cluster.ports)} port mappings", f"{len(cluster.mounts)} mounts"]
    if cluster.node_image:
        parts.append(f"image {cluster.node_image}")
    if cluster.high_memlock:
        parts.append(f"{MEMLOCK_RUNTIME} runtime")
    return Action(STEP, "create-cluster", cluster.name, ", ".join(parts))


def plan_cluster(
    cluster: Cluster, state: ClusterState, *, recreate: bool = False, adopt: bool = False
) -> list[Action]:
    """Returns the actions that bring the cluster to the spec; raises UserError when refused.

    Absent: create. Ours and half-made: delete and create. Ours with only stopped nodes: start
    them. Healthy and as specified: nothing. Differs: rebuild only when ours and `recreate`.
    Not ours: used as it is when healthy and as specified, else refused, unless `adopt` makes it
    ours (adopting a healthy, fitting cluster just records it).
    """
    if cluster.provider == "existing":
        return []
    name = cluster.name
    if not state.exists:
        return [_create(cluster)]
    ours = state.owned or adopt
    adopt_action = (
        [Action(STEP, "adopt-cluster", name, "record it as managed by laconic-helm")]
        if adopt and not state.owned
        else []
    )
    if state.problems:
        only_stopped = not state.unfinished and set(state.problems) == {
            stopped_problem(n) for n in state.stopped_nodes
        }
        if ours and only_stopped:
            return adopt_action + [
                Action(STEP, "start-node", n.name, f"it is {n.status}") for n in state.stopped_nodes
            ]
        if ours:
            why = "; ".join(state.problems)
            return [Action(STEP, "delete-cluster", name, f"rebuild: {why}"), _create(cluster)]
        raise UserError(
            f"cluster {name}: exists but is not healthy ({'; '.join(state.problems)}) and "
            f"{state.ownership}, so laconic-helm leaves it alone",
            hint=f"delete it (kind delete cluster --name {name}), or pass --adopt-cluster to let "
            "laconic-helm rebuild it",
        )
    diffs = differences(cluster, state)
    if not diffs:
        return adopt_action
    listed = "; ".join(diffs)
    if not ours:
        raise UserError(
            f"cluster {name}: differs from the spec ({listed}) and {state.ownership}, "
            "so laconic-helm will not change it",
            hint="use another cluster name, make the spec match it, or pass --adopt-cluster "
            "--recreate-cluster to rebuild it",
        )
    if not recreate:
        raise UserError(
            f"cluster {name}: differs from the spec ({listed}); these are fixed when a kind "
            "cluster is created",
            hint="pass --recreate-cluster to rebuild it (loaded images and node data are lost), "
            "or make the spec match it",
        )
    return [Action(STEP, "delete-cluster", name, f"rebuild: {listed}"), _create(cluster)]


def plan_delete_cluster(cluster: Cluster, state: ClusterState) -> list[Action]:
    """Returns the action deleting the cluster (for `down --delete-cluster`); only if ours.

    A cluster someone else made becomes ours only through `deploy --adopt-cluster`.
    """
    if cluster.provider == "existing":
        raise UserError(
            f"cluster {cluster.name}: provider 'existing': laconic-helm never deletes it"
        )
    if not state.exists:
        return []
    if not state.owned:
        raise UserError(
            f"cluster {cluster.name}: {state.ownership}, so laconic-helm will not delete it",
            hint=f"delete it yourself (kind delete cluster --name {cluster.name}), or adopt it "
            "first with deploy --adopt-cluster",
        )
    return [Action(STEP, "delete-cluster", cluster.name, state.ownership)]


# -- making the change ----------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _check_unchanged(state: ClusterState) -> None:
    """Raises ClusterError when the node containers changed since `state` was observed."""
    now = {n.id for n in await list_nodes(state.name)}
    if now != {n.id for n in state.nodes}:
        raise ClusterError(
            f"cluster {state.name}: its node containers changed while laconic-helm was planning",
            hint="another tool is working on it; re-run when it is done",
        )


async def _kind_delete(name: str) -> None:
    await proc.run([tool_path("kind"), "delete", "cluster", "--name", name])


async def _kind_create(cluster: Cluster) -> None:
    """Writes the config and the record (status creating), runs `kind create`, completes it."""
    folder = cluster_dir(cluster.name)
    memlock = memlock_spec_path(cluster.name) if cluster.high_memlock else None
    if memlock is not None:
        paths.write_private(memlock, (json.dumps(memlock_base_spec(), indent=2) + "\n").encode())
    text = render_kind_config(cluster, memlock_spec=memlock)
    config = folder / "kind-config.yaml"
    paths.write_private(config, text.encode())
    digest = hashlib.sha256(text.encode()).hexdigest()
    record = Record(
        cluster.name, "creating", _now(), config_sha256=digest,
        patches_sha256=patches_digest(cluster),
    )  # fmt: skip
    write_record(record)  # before kind runs: a killed create is still known to be ours
    try:
        await proc.run(
            [
                tool_path("kind"),
                "create",
                "cluster",
                "--name",
                cluster.name,
                "--config",
                str(config),
            ]
        )
    except CommandError as exc:
        if not await list_nodes(cluster.name):
            record_path(cluster.name).unlink(missing_ok=True)
        raise ClusterError(
            f"cluster {cluster.name}: kind create failed: {exc.message}",
            hint="re-run: a half-made cluster of laconic-helm's is rebuilt",
        ) from exc
    nodes = await list_nodes(cluster.name)
    ids = tuple(n.id for n in nodes)
    write_record(replace(record, status="created", node_ids=ids))


async def _start_node(node: str) -> None:
    await docker.run("start", node)


def _adopt(state: ClusterState) -> None:
    ids = tuple(n.id for n in state.nodes)
    write_record(Record(state.name, "adopted", _now(), ids))


async def apply_cluster(cluster: Cluster, state: ClusterState, actions: Sequence[Action]) -> None:
    """Carries out `actions` from `plan_cluster` in order, re-checking before each change.

    Each action is safe to repeat: a delete of an absent cluster succeeds, a create is preceded
    by its record, a start of a running node is a no-op.
    """
    for action in actions:
        log.info("%s", action.line())
        if action.verb == "delete-cluster":
            await _check_unchanged(state)
            await _kind_delete(cluster.name)
            record_path(cluster.name).unlink(missing_ok=True)
        elif action.verb == "create-cluster":
            if await list_nodes(cluster.name):
                raise ClusterError(
                    f"cluster {cluster.name}: has node containers just before kind create",
                    hint="another tool may be making it; re-run when it is done",
                )
            await _kind_create(cluster)
        elif action.verb == "start-node":
            await _start_node(action.target)
        elif action.verb == "adopt-cluster":
            await _check_unchanged(state)
            _adopt(state)
        else:
            raise ValueError(f"not a cluster action: {action.verb}")


@dataclass(frozen=True)
class ClusterAccess:
    """How the rest of the deploy reaches the cluster's API."""

    kubeconfig: Path | None  # None: the default kubeconfig ($KUBECONFIG or ~/.kube/config)
    context: str


def access_of(cluster: Cluster) -> ClusterAccess:
    """Where the releases reach the cluster: for kind, the driver's own kubeconfig copy (which
    `ensure_kubeconfig` keeps current), so helm can be set up before the cluster exists."""
    if cluster.provider == "existing":
        return ClusterAccess(None, cluster.kube_context)
    return ClusterAccess(kubeconfig_path(cluster.name), f"kind-{cluster.name}")


async def ensure_kubeconfig(cluster: Cluster, state: ClusterState) -> ClusterAccess:
    """Returns how to reach the API; for kind, refreshes the driver's own kubeconfig (0600).

    The driver's copy comes from `kind get kubeconfig`, so neither $KUBECONFIG nor a stale
    ~/.kube/config can point the releases at another cluster.
    """
    access = access_of(cluster)
    if access.kubeconfig is None:
        return access
    text = state.kubeconfig
    if text is None:
        text, error = await _kind_kubeconfig(cluster.name)
        if text is None:
            raise ClusterError(f"cluster {cluster.name}: `kind get kubeconfig` fails: {error}")
    with contextlib.suppress(OSError):
        if access.kubeconfig.read_text() == text:
            return access
    paths.write_private(access.kubeconfig, text.encode())
    return access


@dataclass(frozen=True)
class ClusterResult:
    """What `ensure_cluster` did and where the cluster now stands."""

    actions: tuple[Action, ...]
    state: ClusterState
    access: ClusterAccess

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def check_converged(cluster: Cluster, state: ClusterState) -> None:
    """Raises ClusterError unless the cluster is there, healthy and as specified."""
    if cluster.provider == "existing":
        if state.problems:
            raise ClusterError(f"cluster context {cluster.kube_context}: {state.problems[0]}")
        return
    if not state.exists:
        raise ClusterError(f"cluster {cluster.name}: absent after creating it")
    if state.problems:
        raise ClusterError(f"cluster {cluster.name}: {'; '.join(state.problems)}")
    diffs = differences(cluster, state)
    if diffs:
        raise ClusterError(f"cluster {cluster.name}: differs from the spec: {'; '.join(diffs)}")


async def ensure_cluster(
    cluster: Cluster,
    *,
    recreate: bool = False,
    adopt: bool = False,
    state: ClusterState | None = None,
) -> ClusterResult:
    """Ensures the cluster exists, is healthy and matches the spec; repeats do nothing.

    The host checks (ports, mount sources, kube context) and the plan run first, so a refusal
    raises UserError before anything is touched. `state` is a fresh observation when the caller
    already has one.
    """
    from laconic_helm import preflight

    state = state or await observe_cluster(cluster)
    await preflight.check_host(cluster, state)
    actions = plan_cluster(cluster, state, recreate=recreate, adopt=adopt)
    if actions:
        await apply_cluster(cluster, state, actions)
        state = await observe_cluster(cluster)
    check_converged(cluster, state)
    access = await ensure_kubeconfig(cluster, state)
    if cluster.provider == "kind":
        await ensure_records(state, access)
    return ClusterResult(tuple(actions), state, access)


async def delete_cluster(cluster: Cluster) -> list[Action]:
    """Deletes the cluster when this tool created (or adopted) it; absent counts as done.

    The driver's state for it (record, kind config, kubeconfig) goes with it.
    """
    state = await observe_cluster(cluster)
    actions = plan_delete_cluster(cluster, state)
    if actions:
        await _check_unchanged(state)
        await _kind_delete(cluster.name)
    forget_cluster(cluster.name)
    return actions
