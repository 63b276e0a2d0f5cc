"""Maps laconic-so's kind cluster, as it was created, to the spec's `cluster` section: same name,
port mappings and mounts, so the next deploy reuses it instead of a 5-10 minute rebuild."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from laconic_helm.errors import UserError
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import SoDeployment, absolute, as_list, as_mapping

MEMLOCK_RUNTIME = "high-memlock"  # laconic-so's RuntimeClass (and containerd runtime) name
KIND_CONFIG_KEYS = frozenset({"kind", "apiVersion", "name", "nodes", "containerdConfigPatches"})
KIND_NODE_KEYS = frozenset(
    {"role", "image", "labels", "kubeadmConfigPatches", "extraPortMappings", "extraMounts"}
)
_MEMLOCK_PATCH = re.compile(rf'runtimes\.(?:"{MEMLOCK_RUNTIME}"|{MEMLOCK_RUNTIME})\]')


def _node_labels(node: Mapping[str, Any], where: str, found: Findings) -> dict[str, str]:
    """The node's labels: kind's `labels` plus laconic-so's kubeadm `node-labels` patch."""
    labels = {str(k): str(v) for k, v in as_mapping(node.get("labels"), where).items()}
    for i, patch in enumerate(as_list(node.get("kubeadmConfigPatches"), where)):
        try:
            doc = yaml.safe_load(patch) if isinstance(patch, str) else None
        except yaml.YAMLError:
            doc = None
        registration = doc.get("nodeRegistration") if isinstance(doc, dict) else None
        args = registration.get("kubeletExtraArgs") if isinstance(registration, dict) else None
        if isinstance(args, list):  # kubeadm v1beta4: a list of {name, value}
            args = {a.get("name"): a.get("value") for a in args if isinstance(a, dict)}
        labels_only = (
            isinstance(args, dict)
            and set(args) == {"node-labels"}
            and set(registration or {}) == {"kubeletExtraArgs"}
        )
        if not labels_only:
            found.add(
                "unmapped", f"{where}.kubeadmConfigPatches[{i}]", "kubeadm patch other than node "
                "labels; the live node keeps it, a rebuilt one would not have it",
            )  # fmt: skip
        if isinstance(args, dict) and "node-labels" in args:
            for pair in str(args["node-labels"]).split(","):
                key, eq, value = pair.strip().partition("=")
                if key and eq:
                    labels[key] = value
    return labels


def map_cluster(so: SoDeployment, found: Findings) -> dict[str, Any]:
    """The spec's `cluster`: laconic-so's kind cluster with its ports and mounts as created."""
    config = "kind-config.yml"
    for key in sorted(set(so.kind_config) - KIND_CONFIG_KEYS):
        found.add("unmapped", f"{config}: {key}", "kind setting not carried over")
    name = so.kind_config.get("name")
    if name and name != so.cluster_name:
        found.add(
            "assumed",
            f"{config}: name",
            f"says {name!r}, but laconic-so runs the cluster {so.cluster_name!r}; using that",
        )
    nodes = [
        as_mapping(n, so.at(f"{config}: nodes[{i}]"), optional=False)
        for i, n in enumerate(as_list(so.kind_config.get("nodes"), so.at(f"{config}: nodes")))
    ] or [{"role": "control-plane"}]
    roles = [n.get("role", "control-plane") for n in nodes]
    if "control-plane" not in roles:
        raise UserError(f"{so.at(config)}: nodes: no control-plane node")
    cp = roles.index("control-plane")
    for i, role in enumerate(roles):
        if i != cp:
            found.add(
                "unmapped", f"{config}: nodes[{i}]", f"{role} node: the spec describes the "
                "control-plane node only (the live cluster keeps its other nodes)",
            )  # fmt: skip
    node, at = nodes[cp], f"{config}: nodes[{cp}]"
    for key in sorted(set(node) - KIND_NODE_KEYS):
        found.add("unmapped", f"{at}.{key}", "node setting not carried over")
    ports = []
    for i, p in enumerate(as_list(node.get("extraPortMappings"), so.at(at))):
        pm = as_mapping(p, so.at(f"{at}.extraPortMappings[{i}]"), optional=False)
        if not pm.get("hostPort"):
            found.add(
                "unmapped", f"{at}.extraPortMappings[{i}]", "no fixed hostPort (kind chose one "
                "at random); a spec port mapping needs a fixed one",
            )  # fmt: skip
            continue
        ports.append(
            {
                "containerPort": pm.get("containerPort"),
                "hostPort": pm["hostPort"],
                "protocol": str(pm.get("protocol") or "TCP").upper(),
                "listenAddress": str(pm.get("listenAddress") or "0.0.0.0"),
            }
        )
    patches = as_list(so.kind_config.get("containerdConfigPatches"), so.at(config))
    memlock = False
    for i, patch in enumerate(patches):
        if isinstance(patch, str) and _MEMLOCK_PATCH.search(patch):
            memlock = True
        else:
            found.add(
                "unmapped", f"{config}: containerdConfigPatches[{i}]", "containerd patch other "
                f"than laconic-so's {MEMLOCK_RUNTIME} runtime; a rebuilt cluster would lack it",
            )  # fmt: skip
    mounts: list[dict[str, Any]] = []
    for i, m in enumerate(as_list(node.get("extraMounts"), so.at(at))):
        mm = as_mapping(m, so.at(f"{at}.extraMounts[{i}]"), optional=False)
        host = absolute(str(mm.get("hostPath", "")), so.dir)
        if memlock and Path(host).name == "high-memlock-spec.json":
            found.add(
                "changed", f"{at}.extraMounts[{i}]", f"the {MEMLOCK_RUNTIME} runtime's base spec "
                f"{host} becomes highMemlock: true; the live node still reads that file, so keep "
                "it while this cluster lives",
            )  # fmt: skip
            continue
        for key in sorted(set(mm) - {"hostPath", "containerPath", "readOnly", "propagation"}):
            found.add("unmapped", f"{at}.extraMounts[{i}].{key}", "mount option not carried over")
        mount = {
            "hostPath": host,
            "containerPath": str(mm.get("containerPath", "")),
            "readOnly": bool(mm.get("readOnly", False)),
            "propagation": str(mm.get("propagation") or "None"),
        }
        if mount not in mounts:
            mounts.append(mount)
    doc: dict[str, Any] = {"name": so.cluster_name, "provider": "kind"}
    if node.get("image"):
        doc["nodeImage"] = str(node["image"])
    doc["ports"] = ports
    doc["mounts"] = mounts
    doc["nodeLabels"] = _node_labels(node, at, found)
    doc["highMemlock"] = memlock
    return doc


def node_path(host_path: str, cluster: Mapping[str, Any]) -> str | None:
    """Where the kind node sees `host_path` through its mounts (the longest match), or None."""
    pairs = sorted(
        ((m["hostPath"].rstrip("/"), m["containerPath"].rstrip("/")) for m in cluster["mounts"]),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    for host, inside in pairs:
        if host_path == host or host_path.startswith(host + "/"):
            return (inside + host_path[len(host) :]) or "/"
    return None
