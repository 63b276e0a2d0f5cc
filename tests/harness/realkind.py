"""The real-cluster path: the same KubeAPI over a real kind cluster.

Real kind runs on the toolchain scripts/provision-kind makes: a test-only Docker daemon whose
runtime leaves out the capability this kernel withholds (selected with DOCKER_HOST, so the
host's own daemon is never used for kind), and a kind node image built here. The harness adds
this host's two kind config patches (kubelet on cgroup v1; containerd not lowering
oom_score_adj, which needs CAP_SYS_RESOURCE) through the spec's `kindPatches`, the way an
operator adds theirs; the driver never adds them by itself.

The session cluster is created with the harness's audit policy (kind's documented auditing
recipe: kubeadm extraArgs plus the log folder mounted back to the host), so writes_since
works as on the stand-in. The harness identity is a client certificate issued from the
cluster's own CA, read from the control-plane node.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from laconic_helm import cluster as kindcluster
from laconic_helm.spec import Cluster
from tests.harness import controlplane, nodes, pki
from tests.harness.api import KubeAPI
from tests.harness.audit import AuditLog
from tests.harness.client import Client, Credentials

_AUDIT_DIR_IN_NODE = "/var/log/laconic-helm-audit"
_POLICY_DIR_IN_NODE = "/etc/kubernetes/laconic-helm-audit"
_POLICY_IN_NODE = f"{_POLICY_DIR_IN_NODE}/policy.yaml"

CACHE = Path(
    os.environ.get("LACONIC_HELM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "laconic-helm"
)
TOOLCHAIN = CACHE / "kind"
DOCKER_HOST = "unix://{}/docker.sock".format(
    os.environ.get("LACONIC_HELM_KIND_RUN", "/run/laconic-helm/kind-docker")
)

# This host's patches: kubelet 1.35+ refuses cgroup v1 unless told; runc cannot lower a
# sandbox's oom_score_adj without CAP_SYS_RESOURCE. Merged by kind after the driver's own, which
# has containerd read registries from /etc/containerd/certs.d: the host is offline, and the node
# image sends every registry there to a closed local port (a pull of a missing image fails at
# once instead of after minutes of DNS time-outs, during which the kubelet cannot even stop
# the pod); registry mode adds its registry's entry.
HOST_PATCHES: dict[str, Any] = {
    "kubeadm": [{"kind": "KubeletConfiguration", "failCgroupV1": False}],
    "containerd": ['[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n'],
}


def docker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) with DOCKER_HOST selecting the test daemon kind runs on."""
    return {**(os.environ if env is None else env), "DOCKER_HOST": DOCKER_HOST}


@contextlib.contextmanager
def docker_host() -> Iterator[None]:
    """The test daemon selected in this process too, for driver code called in-process."""
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = DOCKER_HOST
    try:
        yield
    finally:
        if before is None:
            del os.environ["DOCKER_HOST"]
        else:
            os.environ["DOCKER_HOST"] = before


def node_image() -> str:
    return (TOOLCHAIN / "node-image").read_text().strip()


def test_images() -> dict[str, str]:
    """The images scripts/provision-kind built for the end-to-end tests, by role."""
    return yaml.safe_load((TOOLCHAIN / "images").read_text())


def missing() -> str | None:
    """Why real kind cannot run here, or None when the provisioned toolchain is complete."""
    if shutil.which("kind") is None:
        return "kind not found (scripts/provision-tools installs it)"
    for name in ("node-image", "images"):
        if not (TOOLCHAIN / name).is_file():
            return f"no {TOOLCHAIN / name}: run scripts/provision-kind"
    done = subprocess.run(
        ["docker", "image", "inspect", node_image()],
        env=docker_env(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        image = node_image()
        return f"the test Docker daemon ({DOCKER_HOST}) lacks {image}: run scripts/provision-kind"
    return None


def cluster_fields(**more: Any) -> dict[str, Any]:
    """The spec's `cluster` fields every real-kind cluster of the tests has: the node image
    built here and this host's patches (`more` adds to them)."""
    return {"nodeImage": node_image(), "kindPatches": HOST_PATCHES, **more}


def _audit_patch() -> dict[str, Any]:
    return {
        "kind": "ClusterConfiguration",
        "apiServer": {
            "extraArgs": [
                {"name": "audit-policy-file", "value": _POLICY_IN_NODE},
                {"name": "audit-log-path", "value": f"{_AUDIT_DIR_IN_NODE}/audit.log"},
            ],
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


def audited(workdir: Path, **more: Any) -> tuple[dict[str, Any], Path]:
    """`cluster_fields(**more)` plus the API server's audit log (the harness's policy), and
    where that log appears on the host: the fields of a driver-made cluster whose writes the
    tests count."""
    policy = workdir / "audit-policy"  # a folder: the driver mounts folders only
    policy.mkdir(exist_ok=True)
    (policy / "policy.yaml").write_text(controlplane.AUDIT_POLICY)
    audit_dir = workdir / "audit"
    audit_dir.mkdir(exist_ok=True)
    audit_dir.chmod(0o777)
    patches = {
        "kubeadm": [*HOST_PATCHES["kubeadm"], _audit_patch()],
        "containerd": HOST_PATCHES["containerd"],
    }
    mounts = [
        *more.pop("mounts", []),
        {"hostPath": str(policy), "containerPath": _POLICY_DIR_IN_NODE, "readOnly": True},
        {"hostPath": str(audit_dir), "containerPath": _AUDIT_DIR_IN_NODE},
    ]
    fields = cluster_fields(**more, kindPatches=patches, mounts=mounts)
    return fields, audit_dir / "audit.log"


def session_config(name: str, workdir: Path) -> str:
    """The session cluster's kind config, rendered by the driver's own code from a spec: one
    node labelled ingress-ready, this host's patches, and the audit log on the host."""
    fields, _ = audited(workdir, name=name)
    return kindcluster.render_kind_config(Cluster.model_validate(fields))


def _node_file(node: str, path: str) -> bytes:
    return subprocess.run(
        ["docker", "exec", node, "cat", path], env=docker_env(), capture_output=True, check=True
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
    config.write_text(session_config(name, workdir))
    started = time.monotonic()
    argv = [kind, "create", "cluster", "--name", name, "--config", str(config)]
    subprocess.run(
        [*argv, "--kubeconfig", str(kubeconfig), "--wait", "300s"], env=docker_env(), check=True
    )
    # The images the charts run here, put in by kind's own loader (charts installed by hand in
    # the session's tests then start as they would on an operator's kind cluster).
    load = [kind, "load", "docker-image", "--name", name, *test_images().values()]
    for attempt in (1, 2):  # a loaded host's fresh node has failed an import once
        done = subprocess.run(load, env=docker_env(), capture_output=True, text=True, check=False)
        if done.returncode == 0:
            break
        if attempt == 2:
            raise RuntimeError(f"kind load into {name} failed: {done.stderr.strip()}")
    api = cluster_api(name, kubeconfig, workdir / "audit" / "audit.log")
    api.startup_seconds = time.monotonic() - started
    return api


def delete_cluster(kind: str, name: str, kubeconfig: Path) -> None:
    subprocess.run(
        [kind, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)],
        env=docker_env(),
        check=False,
    )


def remove_orphans() -> list[str]:
    """Deletes the real kind clusters of test sessions that have ended: test clusters are
    named `<prefix>-<session pid>-...` (tests/harness/pytest_fixtures.py)."""
    listed = subprocess.run(
        ["kind", "get", "clusters"], env=docker_env(), capture_output=True, text=True, check=False
    )
    orphans = [
        name
        for name in listed.stdout.split()
        if (owner := re.match(r"^[a-z]+-(\d+)-", name)) and nodes.owner_gone(owner[1])
    ]
    for name in orphans:
        subprocess.run(
            ["kind", "delete", "cluster", "--name", name],
            env=docker_env(),
            capture_output=True,
            check=False,
        )
    return orphans
