"""The kind config a cluster is created from, and a digest of the spec's own kind patches.

Everything in it (ports, mounts, node image, containerd runtimes) is fixed once kind creates the
cluster; equal specs must give byte-equal text, so the record can tell which config made it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import yaml

from laconic_helm import handoff
from laconic_helm.cluster.memlock import MEMLOCK_SPEC_IN_NODE, memlock_containerd_patch
from laconic_helm.containerd import CERTS_DIR

if TYPE_CHECKING:
    from pathlib import Path

    from laconic_helm.spec import Cluster

KIND_CONFIG_API = "kind.x-k8s.io/v1alpha4"
# Registry mode writes each registry's hosts.toml under this folder of the node; containerd
# only reads it when its config says so, and the config is fixed once the node is made.
REGISTRY_HOSTS_PATCH = (
    f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{CERTS_DIR}"\n'
)


def kind_config(
    cluster: Cluster, *, memlock_spec: Path | None = None, transfer: Path | None = None
) -> dict[str, Any]:
    """Returns the kind config for `cluster`: one control-plane node, keys in a fixed order.

    Node labels use kind's own `labels` field rather than a kubeadm patch: kubeadm v1beta4
    (Kubernetes 1.36+, kind's default node) takes kubelet flags as a list, not a map.
    `memlock_spec` is the host file mounted as the high-memlock runtime's base spec; `transfer`
    the host folder image streams reach the node through (see `handoff`).
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
    if transfer is not None:
        mounts.append(
            {
                "hostPath": str(transfer),
                "containerPath": handoff.IN_NODE,
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
    containerd = [REGISTRY_HOSTS_PATCH]
    containerd += [memlock_containerd_patch()] if cluster.high_memlock else []
    doc["containerdConfigPatches"] = containerd + list(cluster.kind_patches.containerd)
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


def render_kind_config(
    cluster: Cluster, *, memlock_spec: Path | None = None, transfer: Path | None = None
) -> str:
    """Returns the kind config as YAML; equal specs give byte-equal text."""
    doc = kind_config(cluster, memlock_spec=memlock_spec, transfer=transfer)
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)
