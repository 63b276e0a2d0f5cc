"""The real-cluster path: the same KubeAPI over a real kind cluster (LACONIC_HELM_E2E=1).

The session cluster is created with the harness's audit policy (kind's documented auditing
recipe: kubeadm extraArgs plus the log directory mounted back to the host), so writes_since
works as on the stand-in. The harness identity is a client certificate issued from the
cluster's own CA, read from the control-plane node.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from tests.harness import controlplane, pki
from tests.harness.api import KubeAPI
from tests.harness.audit import AuditLog
from tests.harness.client import Client, Credentials

_AUDIT_DIR_IN_NODE = "/var/log/laconic-helm-audit"
_POLICY_IN_NODE = "/etc/kubernetes/laconic-helm-audit-policy.yaml"


def kind_config(workdir: Path) -> str:
    """A one-node cluster labelled ingress-ready, with the harness's audit log on the host."""
    policy = workdir / "audit-policy.yaml"
    policy.write_text(controlplane.AUDIT_POLICY)
    audit_dir = workdir / "audit"
    audit_dir.mkdir(exist_ok=True)
    cluster_patch = {
        "kind": "ClusterConfiguration",
        "apiServer": {
            "extraArgs": {
                "audit-policy-file": _POLICY_IN_NODE,
                "audit-log-path": f"{_AUDIT_DIR_IN_NODE}/audit.log",
            },
            "extraVolumes": [
                {
                    "name": "laconic-helm-audit-policy",
                    "hostPath": _POLICY_IN_NODE,
                    "mountPath": _POLICY_IN_NODE,
                    "readOnly": True,
                    "pathType": "File",
                },
                {
                    "name": "laconic-helm-audit-log",
                    "hostPath": _AUDIT_DIR_IN_NODE,
                    "mountPath": _AUDIT_DIR_IN_NODE,
                    "pathType": "DirectoryOrCreate",
                },
            ],
        },
    }
    init_patch = {
        "kind": "InitConfiguration",
        "nodeRegistration": {"kubeletExtraArgs": {"node-labels": "ingress-ready=true"}},
    }
    config = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [
            {
                "role": "control-plane",
                "kubeadmConfigPatches": [yaml.safe_dump(init_patch), yaml.safe_dump(cluster_patch)],
                "extraMounts": [
                    {"hostPath": str(policy), "containerPath": _POLICY_IN_NODE, "readOnly": True},
                    {"hostPath": str(audit_dir), "containerPath": _AUDIT_DIR_IN_NODE},
                ],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _node_file(node: str, path: str) -> bytes:
    return subprocess.run(
        ["docker", "exec", node, "cat", path], capture_output=True, check=True
    ).stdout


def cluster_api(cluster: str, kubeconfig: Path, audit_log: Path | None = None) -> KubeAPI:
    """The API of real kind cluster `cluster`, whose kind-<name> context is in `kubeconfig`."""
    context = f"kind-{cluster}"
    admin = Credentials.from_kubeconfig(kubeconfig.read_text(), context)
    plane = f"{cluster}-control-plane"
    ca = pki.load_authority(
        _node_file(plane, "/etc/kubernetes/pki/ca.crt"),
        _node_file(plane, "/etc/kubernetes/pki/ca.key"),
    )
    pair = ca.issue(pki.HARNESS_USER, organization="system:masters")
    harness = Client(Credentials(admin.server, admin.ca_pem, pair.cert, pair.key))

    def read_from(offset: int) -> bytes:
        if audit_log is None:
            raise RuntimeError(f"kind cluster {cluster} was created without the audit log")
        if not audit_log.exists():
            return b""
        with audit_log.open("rb") as f:
            f.seek(offset)
            return f.read()

    return KubeAPI(
        kubeconfig=kubeconfig,
        context=context,
        server=admin.server,
        admin=Client(admin),
        harness=harness,
        audit=AuditLog(harness, read_from),
        real_kubelet=True,
    )


def create_session_cluster(kind: str, name: str, workdir: Path) -> KubeAPI:
    kubeconfig = workdir / "kubeconfig"
    config = workdir / "kind-config.yaml"
    config.write_text(kind_config(workdir))
    started = time.monotonic()
    argv = [kind, "create", "cluster", "--name", name, "--config", str(config)]
    subprocess.run([*argv, "--kubeconfig", str(kubeconfig), "--wait", "180s"], check=True)
    api = cluster_api(name, kubeconfig, workdir / "audit" / "audit.log")
    api.startup_seconds = time.monotonic() - started
    return api


def delete_cluster(kind: str, name: str, kubeconfig: Path) -> None:
    subprocess.run(
        [kind, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)], check=False
    )
