"""kind's cluster config (kind.x-k8s.io/v1alpha4 Cluster), read as strictly as kind reads it.

Unknown fields, a wrong apiVersion/kind, bad roles, ports or names are refused with kind's own
wording, so a config the stand-in accepts is one real kind accepts. What the stand-in acts on:
the name, node roles, extraPortMappings, extraMounts, node labels, and node labels given
through kubeadmConfigPatches (`nodeRegistration.kubeletExtraArgs.node-labels`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.nodes import Mount, PortMapping

API_VERSION = "kind.x-k8s.io/v1alpha4"
DEFAULT_NAME = "kind"
_NAME_RE = re.compile(r"^[a-z0-9.-]+$")

_FIELDS: dict[str, set[str]] = {
    "Cluster": {
        "kind",
        "apiVersion",
        "name",
        "nodes",
        "networking",
        "featureGates",
        "runtimeConfig",
        "kubeadmConfigPatches",
        "kubeadmConfigPatchesJSON6902",
        "containerdConfigPatches",
        "containerdConfigPatchesJSON6902",
    },
    "Node": {
        "role",
        "image",
        "labels",
        "extraMounts",
        "extraPortMappings",
        "kubeadmConfigPatches",
        "kubeadmConfigPatchesJSON6902",
    },
    "Networking": {
        "ipFamily",
        "apiServerPort",
        "apiServerAddress",
        "podSubnet",
        "serviceSubnet",
        "disableDefaultCNI",
        "kubeProxyMode",
        "dnsSearch",
    },
    "Mount": {"containerPath", "hostPath", "readOnly", "selinuxRelabel", "propagation"},
    "PortMapping": {"containerPort", "hostPort", "listenAddress", "protocol"},
}
_PROPAGATION = {"": "", "None": "", "HostToContainer": "rslave", "Bidirectional": "rshared"}


class ConfigError(Exception):
    """A config kind would refuse; the message is kind's."""


@dataclass(frozen=True)
class NodeConfig:
    role: str
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    mounts: tuple[Mount, ...] = ()
    kubeadm_patches: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    kubeadm_patches: tuple[str, ...] = ()
    api_server_address: str = "127.0.0.1"
    api_server_port: int = 0
    containerd_patches: tuple[str, ...] = ()


def _check_fields(node: yaml.Node, type_name: str) -> list[str]:
    """Unknown keys of a mapping node and of its known children, as kind's strict decoder says."""
    errors = []
    if not isinstance(node, yaml.MappingNode):
        return errors
    children = {
        "nodes": "Node",
        "networking": "Networking",
        "extraMounts": "Mount",
        "extraPortMappings": "PortMapping",
    }
    for key, value in node.value:
        name = key.value
        if name not in _FIELDS[type_name]:
            line = key.start_mark.line + 1
            errors.append(f"line {line}: field {name} not found in type v1alpha4.{type_name}")
        elif name in children:
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for item in items:
                errors += _check_fields(item, children[name])
    return errors


def _port(mapping: dict[str, Any]) -> PortMapping:
    protocol = str(mapping.get("protocol") or "TCP").upper()
    return PortMapping(
        container_port=int(mapping.get("containerPort", 0)),
        host_port=int(mapping.get("hostPort", 0)),
        protocol=protocol,
        listen_address=str(mapping.get("listenAddress") or "0.0.0.0"),
    )


def _mount(entry: dict[str, Any], base: Path) -> Mount:
    propagation = str(entry.get("propagation") or "")
    if propagation not in _PROPAGATION:
        propagation = ""  # kind falls back to private for unknown values
    host = Path(str(entry.get("hostPath", "")))
    return Mount(
        host_path=str(host if host.is_absolute() else (base / host).resolve()),
        container_path=str(entry.get("containerPath", "")),
        read_only=bool(entry.get("readOnly", False)),
        propagation=_PROPAGATION[propagation],
    )


def parse(text: str, base: Path | None = None) -> ClusterConfig:
    """Reads a config; relative hostPaths are taken from `base` (the working directory)."""
    base = base or Path.cwd()
    try:
        head = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not determine kind / apiVersion for config: {exc}") from exc
    if not isinstance(head, dict):
        raise ConfigError("could not determine kind / apiVersion for config")
    if head.get("apiVersion") != API_VERSION:
        raise ConfigError(f"unknown apiVersion: {head.get('apiVersion', '')}")
    if head.get("kind") != "Cluster":
        raise ConfigError(f"unknown kind {head.get('kind', '')} for apiVersion: {API_VERSION}")
    unknown = _check_fields(yaml.compose(text), "Cluster")
    if unknown:
        raise ConfigError(
            "unable to decode config: yaml: unmarshal errors:\n  " + "\n  ".join(unknown)
        )
    nodes = tuple(
        NodeConfig(
            role=str(n.get("role") or "control-plane"),
            image=str(n.get("image") or ""),
            labels={str(k): str(v) for k, v in (n.get("labels") or {}).items()},
            ports=tuple(_port(p) for p in n.get("extraPortMappings") or []),
            mounts=tuple(_mount(m, base) for m in n.get("extraMounts") or []),
            kubeadm_patches=tuple(n.get("kubeadmConfigPatches") or []),
        )
        for n in head.get("nodes") or [{"role": "control-plane"}]
    )
    networking = head.get("networking") or {}
    return ClusterConfig(
        name=str(head.get("name") or ""),
        nodes=nodes,
        kubeadm_patches=tuple(head.get("kubeadmConfigPatches") or []),
        api_server_address=str(networking.get("apiServerAddress") or "127.0.0.1"),
        api_server_port=int(networking.get("apiServerPort") or 0),
        containerd_patches=tuple(head.get("containerdConfigPatches") or []),
    )


def default_config() -> ClusterConfig:
    return ClusterConfig(name="", nodes=(NodeConfig(role="control-plane"),))


def validate(config: ClusterConfig) -> None:
    """kind's Cluster.Validate: every problem at once, in kind's words."""
    errors = []
    if not _NAME_RE.match(config.name):
        errors.append(
            f"'{config.name}' is not a valid cluster name, cluster names must match "
            f"`{_NAME_RE.pattern}`"
        )
    for i, node in enumerate(config.nodes):
        problems = []
        if node.role not in ("control-plane", "worker"):
            problems.append(f'"{node.role}" is not a valid node role')
        for p in node.ports:
            for what, port in (("hostPort", p.host_port), ("containerPort", p.container_port)):
                if port < -1 or port > 65535:
                    problems.append(f"invalid {what}: invalid port number: {port}")
            if p.protocol not in ("TCP", "UDP", "SCTP"):
                problems.append(f"unknown port mapping protocol: {p.protocol}")
        problems += _duplicate_ports(node.ports)
        if problems:
            errors.append(f"invalid configuration for node {i}: {_aggregate(problems)}")
    if not any(n.role == "control-plane" for n in config.nodes):
        errors.append("must have at least one control-plane node")
    if errors:
        raise ConfigError(_aggregate(errors))


def _duplicate_ports(ports: tuple[PortMapping, ...]) -> list[str]:
    seen: dict[str, set[str]] = {}
    for p in ports:
        if p.host_port in (0, -1):
            continue  # random ports never collide
        try:
            addr = ipaddress.ip_address(p.listen_address)
        except ValueError:
            return [f"invalid portMapping: invalid listen address: {p.listen_address}"]
        where = "0.0.0.0" if addr.is_unspecified else str(addr)
        key = f"{p.host_port}/{p.protocol}"
        bound = seen.setdefault(key, set())
        if where in bound or "0.0.0.0" in bound or (where == "0.0.0.0" and bound):
            return [
                "invalid portMapping: port mapping with same listen address, port and protocol "
                f"already configured: {where}:{key}"
            ]
        bound.add(where)
    return []


def _aggregate(errors: list[str]) -> str:
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


def node_names(config: ClusterConfig) -> list[str]:
    """kind's names: <cluster>-<role>, then <cluster>-<role>2, 3, ... in config order."""
    counts: dict[str, int] = {}
    names = []
    for node in config.nodes:
        counts[node.role] = counts.get(node.role, 0) + 1
        suffix = "" if counts[node.role] == 1 else str(counts[node.role])
        names.append(f"{config.name}-{node.role}{suffix}")
    return names


def kubeadm_node_labels(patches: tuple[str, ...], bootstrap: bool) -> dict[str, str]:
    """node-labels set through kubeadm patches: InitConfiguration reaches the first
    control-plane node (kubeadm init), JoinConfiguration every other node (kubeadm join)."""
    wanted = "InitConfiguration" if bootstrap else "JoinConfiguration"
    labels: dict[str, str] = {}
    for patch in patches:
        for doc in yaml.safe_load_all(patch):
            if not isinstance(doc, dict) or doc.get("kind") != wanted:
                continue
            extra = (doc.get("nodeRegistration") or {}).get("kubeletExtraArgs") or {}
            if isinstance(extra, list):  # kubeadm v1beta4: a list of {name, value}
                extra = {e.get("name"): e.get("value") for e in extra if isinstance(e, dict)}
            for pair in str(extra.get("node-labels") or "").split(","):
                key, sep, value = pair.partition("=")
                if sep and key.strip():
                    labels[key.strip()] = value.strip()
    return labels
