"""A node deployed by the real CLI on real kind, as the end-to-end tests and the real-kind
benchmark see it: the built-in default deployment (Caddy in kind mode, agave test mode behind it)
on host ports of its own, with the images scripts/provision-kind built, and the API server's
audit log on the host so writes can be counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import realkind
from tests.harness.api import KubeAPI
from tests.harness.deployment_under_test import Deployment, Run, keypair_bytes, write_spec
from tests.harness.loopback import free_port

REPO = Path(__file__).resolve().parent.parent.parent
RPC_HOST = "rpc.agave.localhost"
WS_HOST = "ws.agave.localhost"
CADDY, AGAVE = "caddy-ingress", "agave"
NAMESPACES = {CADDY: "caddy-system", AGAVE: "agave"}
IDENTITY_SECRET = "agave-identity"


def tool(name: str) -> str:
    """A provisioned program (scripts/provision-tools puts them on PATH)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: run scripts/provision-tools")
    return path


def repo_tag(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def spec(
    cluster: dict[str, Any], http_port: int, keypair: Path, *, agave: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The deployment: `cluster` fields (realkind.audited or cluster_fields), the test images,
    Caddy, and agave (its values updated with `agave`) verified through Caddy on `http_port`."""
    images = realkind.test_images()
    agave_repo, agave_tag = repo_tag(images["agave"])
    busybox_repo, busybox_tag = repo_tag(images["busybox"])
    test_image = {"image": {"repository": busybox_repo, "tag": busybox_tag}}
    values = REPO / "values"
    return {
        "cluster": cluster,
        "images": [images["caddy"], images["agave"], images["busybox"]],
        "imageDelivery": {"mode": "stream"},  # registry mode has a test of its own
        "releases": [
            {
                "name": CADDY,
                "chart": str(REPO / "charts" / "caddy-ingress"),
                "namespace": NAMESPACES[CADDY],
                "valuesFiles": [str(values / "caddy-ingress" / "kind.yaml")],
                "values": {"tests": test_image},
                "timeout": 180,
            },
            {
                "name": AGAVE,
                "chart": str(REPO / "charts" / "agave"),
                "namespace": NAMESPACES[AGAVE],
                "valuesFiles": [str(values / "agave" / "kind-test.yaml")],
                "values": {
                    "image": {"repository": agave_repo, "tag": agave_tag},
                    "identity": {"existingSecret": IDENTITY_SECRET},
                    "tests": test_image,
                    **(agave or {}),
                },
                "secrets": [{"name": IDENTITY_SECRET, "files": {"identity.json": str(keypair)}}],
                "verify": {"url": f"http://127.0.0.1:{http_port}/", "host": RPC_HOST},
                "timeout": 180,
            },
        ],
    }


def ports(http_port: int, https_port: int) -> list[dict[str, Any]]:
    """Kind port mappings of Caddy's 80 and 443 to host ports on the loopback address."""
    return [
        {"containerPort": 80, "hostPort": http_port, "listenAddress": "127.0.0.1"},
        {"containerPort": 443, "hostPort": https_port, "listenAddress": "127.0.0.1"},
    ]


@dataclass
class Node:
    """A deployment on real kind: the CLI, the host port Caddy serves on, helm and the API."""

    root: Path
    deployment: Deployment
    http_port: int
    audit_log: Path
    first: Run | None = None  # the first deploy, once made

    @property
    def cluster(self) -> str:
        return self.deployment.cluster

    @property
    def kubeconfig(self) -> Path:
        return self.deployment.state_dir / "clusters" / self.cluster / "kubeconfig"

    @property
    def node(self) -> str:
        return f"{self.cluster}-control-plane"

    @property
    def env(self) -> dict[str, str]:
        return self.deployment.env

    def api(self) -> KubeAPI:
        """The cluster's API (the harness identity, the audit log); the cluster must exist."""
        return realkind.cluster_api(self.cluster, self.kubeconfig, self.audit_log)

    def rpc(self, method: str, host: str = RPC_HOST, timeout: float = 10) -> dict[str, Any]:
        """One JSON-RPC call from the host through kind's port mapping and Caddy."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/",
            data=body,
            headers={"Content-Type": "application/json", "Host": host},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read()))

    def wait_serving(self, timeout: float = 60, host: str = RPC_HOST) -> None:
        """Until getHealth answers "ok" through Caddy (a route is missing for a moment after
        Caddy or the node restarted)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = self.rpc("getHealth", host=host, timeout=5)
                if last.get("result") == "ok":
                    return
            except (OSError, urllib.error.URLError, ValueError) as e:
                last = e
            time.sleep(0.5)
        raise AssertionError(f"the node does not serve RPC through Caddy: {last}")

    def helm(self, *args: str, major: int = 4) -> subprocess.CompletedProcess[str]:
        return self._tool(tool("helm" if major == 4 else "helm3"), *args)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._tool(tool("kubectl"), *args)

    def _tool(self, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def make(
    root: Path,
    cluster: str,
    *,
    agave: dict[str, Any] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> Node:
    """Writes the spec of a new node (its own host ports, keypair and state folder; agave's
    values updated with `agave`, the node given `mounts`) under `root`; nothing is deployed
    yet."""
    root.mkdir(parents=True, exist_ok=True)
    keypair = root / "identity.json"
    keypair.write_bytes(keypair_bytes(cluster))
    keypair.chmod(0o600)
    http_port, https_port = free_port(), free_port()
    fields, audit_log = realkind.audited(
        root, name=cluster, ports=ports(http_port, https_port), mounts=mounts or []
    )
    path = write_spec(root, spec(fields, http_port, keypair, agave=agave))
    env = realkind.docker_env(
        {
            **os.environ,
            "KUBECONFIG": str(root / "kubeconfig"),
            "LACONIC_HELM_STATE": str(root / "state"),
            "LACONIC_HELM_HELM": tool("helm"),
        }
    )
    return Node(root, Deployment(path, cluster, env), http_port, audit_log)


def delete_cluster(node: Node) -> None:
    subprocess.run(
        ["kind", "delete", "cluster", "--name", node.cluster],
        env=node.env,
        capture_output=True,
        check=False,
    )


@contextlib.contextmanager
def deployed(root: Path, cluster: str, *, agave: dict[str, Any] | None = None) -> Iterator[Node]:
    """A node deployed from no cluster (its first deploy in `first`); the cluster is deleted
    at the end."""
    node = make(root, cluster, agave=agave)
    try:
        node.first = node.deployment.run("deploy", timeout=900)
        assert node.first.code == 0, f"{node.first.error}\n{node.first.stderr}"
        yield node
    finally:
        delete_cluster(node)
