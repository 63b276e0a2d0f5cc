"""The operator's whole job on real kind: from no cluster to a node serving JSON-RPC through
Caddy, with the real charts, the real Caddy ingress controller (built from its source) and the
agave RPC stand-in (tests/images/agave-standin; what it cannot show is in tests/README.md).

One module-wide deployment, made by the real CLI; each test then looks at it the way an
operator would: requests from the host through kind's port mapping, `helm test`, `status`,
`logs`, and a re-run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, helm_binary
from tests.harness import nodes, realkind
from tests.harness.deployment import Deployment, free_port, keypair_bytes, write_spec

pytestmark = pytest.mark.cluster

RPC_HOST = "rpc.agave.localhost"
WS_HOST = "ws.agave.localhost"


def _repo_tag(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def e2e_spec(cluster: str, http_port: int, https_port: int, keypair: Path) -> dict[str, Any]:
    """The built-in default deployment (Caddy in kind mode, agave test mode behind it), on host
    ports of its own, with the images built for this host's real kind."""
    images = realkind.test_images()
    agave_repo, agave_tag = _repo_tag(images["agave"])
    busybox_repo, busybox_tag = _repo_tag(images["busybox"])
    test_image = {"image": {"repository": busybox_repo, "tag": busybox_tag}}
    values = REPO / "values"
    return {
        "cluster": realkind.cluster_fields(
            name=cluster,
            ports=[
                {"containerPort": 80, "hostPort": http_port, "listenAddress": "127.0.0.1"},
                {"containerPort": 443, "hostPort": https_port, "listenAddress": "127.0.0.1"},
            ],
        ),
        "images": [images["caddy"], images["agave"], images["busybox"]],
        "releases": [
            {
                "name": "caddy-ingress",
                "chart": str(REPO / "charts" / "caddy-ingress"),
                "namespace": "caddy-system",
                "valuesFiles": [str(values / "caddy-ingress" / "kind.yaml")],
                "values": {"tests": test_image},
                "timeout": 180,
            },
            {
                "name": "agave",
                "chart": str(REPO / "charts" / "agave"),
                "namespace": "agave",
                "valuesFiles": [str(values / "agave" / "kind-test.yaml")],
                "values": {
                    "image": {"repository": agave_repo, "tag": agave_tag},
                    "identity": {"existingSecret": "agave-identity"},
                    "tests": test_image,
                },
                "secrets": [{"name": "agave-identity", "files": {"identity.json": str(keypair)}}],
                "verify": {"url": f"http://127.0.0.1:{http_port}/", "host": RPC_HOST},
                "timeout": 180,
            },
        ],
    }


class Node:
    """The deployment as the tests see it: the CLI, the host ports, and helm."""

    def __init__(self, deployment: Deployment, http_port: int, first: Any) -> None:
        self.deployment = deployment
        self.http_port = http_port
        self.first = first  # the first deploy's Run

    def rpc(self, method: str, host: str = RPC_HOST) -> dict[str, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/",
            data=body,
            headers={"Content-Type": "application/json", "Host": host},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm_binary(4), *args],
            env=self.deployment.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("e2e")
    keypair = root / "identity.json"
    keypair.write_bytes(keypair_bytes("e2e"))
    keypair.chmod(0o600)
    cluster = f"e2e-{os.environ[nodes.OWNER_ENV]}-node"
    http_port, https_port = free_port(), free_port()
    spec = write_spec(root, e2e_spec(cluster, http_port, https_port, keypair))
    env = realkind.docker_env(
        {
            **os.environ,
            "KUBECONFIG": str(root / "kubeconfig"),
            "LACONIC_HELM_STATE": str(root / "state"),
            "LACONIC_HELM_HELM": helm_binary(4),
        }
    )
    deployment = Deployment(spec, cluster, env)
    try:
        first = deployment.run("deploy", timeout=900)
        assert first.code == 0, first.stderr
        yield Node(deployment, http_port, first)
    finally:
        subprocess.run(
            ["kind", "delete", "cluster", "--name", cluster],
            env=env,
            capture_output=True,
            check=False,
        )


def test_deploy_from_no_cluster_serves_json_rpc_through_caddy(node: Node) -> None:
    report = node.first.report
    assert report["ok"] is True and report["changed"] is True
    health = node.rpc("getHealth")
    assert health["result"] == "ok"
    version = node.rpc("getVersion")["result"]
    assert version["solana-core"]
    first, second = node.rpc("getSlot")["result"], None
    deadline = time.monotonic() + 30
    while (second := node.rpc("getSlot")["result"]) <= first and time.monotonic() < deadline:
        time.sleep(0.5)
    assert second > first, "the node's slot does not advance"


def test_the_verify_step_reaches_the_node_through_the_ingress(node: Node) -> None:
    verify = [s for s in node.first.report["steps"] if s["name"].startswith("verify")]
    assert verify, node.first.report["steps"]
    assert all(s["status"] == "ok" for s in verify), verify


def test_the_websocket_route_reaches_the_node(node: Node) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as conn:
        conn.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: {WS_HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        answer = _read_until(conn, b"\r\n\r\n").decode()
        assert answer.startswith("HTTP/1.1 101"), answer
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        assert f"sec-websocket-accept: {accept}".lower() in answer.lower()
        _send_text(conn, json.dumps({"jsonrpc": "2.0", "id": 7, "method": "slotSubscribe"}))
        reply = json.loads(_read_text(conn))
        assert reply["id"] == 7 and isinstance(reply["result"], int)
        notification = json.loads(_read_text(conn))
        assert notification["method"] == "slotNotification"


def test_helm_test_passes_for_both_releases(node: Node) -> None:
    for release, namespace in (("caddy-ingress", "caddy-system"), ("agave", "agave")):
        done = node.helm("test", release, "--namespace", namespace, "--timeout", "180s", "--logs")
        assert done.returncode == 0, f"{release}: {done.stdout}{done.stderr}"
        assert "Phase:          Succeeded" in done.stdout, done.stdout


def test_status_shows_both_workloads_ready(node: Node) -> None:
    status = node.deployment.run("status")
    assert status.code == 0, status.stderr
    releases = {r["release"]: r for r in status.report["releases"]}
    assert set(releases) == {"caddy-ingress", "agave"}
    for release in releases.values():
        assert release["status"] == "deployed", release
        assert release["workloads"] and all(release["workloads"].values()), release


def test_logs_print_the_nodes_own_lines_and_follow_stops_on_ctrl_c(node: Node) -> None:
    logs = node.deployment.run("logs", "--release", "agave", "--tail", "20", json_output=False)
    assert logs.code == 0, logs.stderr
    assert "agave_standin" in logs.stdout, logs.stdout
    follow = subprocess.Popen(
        node.deployment.argv("logs", "--release", "agave", "-f", json_output=False),
        env=node.deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 2 and time.monotonic() < deadline:
            if "agave_standin" in follow.stdout.readline():
                seen += 1
        assert seen == 2, "no new log lines while following"
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert "Traceback" not in err, err


def test_a_rerun_changes_nothing_and_plan_has_nothing_to_do(node: Node) -> None:
    again = node.deployment.run("deploy")
    assert again.code == 0, again.stderr
    assert again.report["changed"] is False, again.report
    plan = node.deployment.run("plan")
    assert plan.code == 0 and plan.report["actions"] == [], plan.report
    history = node.helm("history", "agave", "--namespace", "agave", "-o", "json")
    assert len(json.loads(history.stdout)) == 1


# -- helpers --------------------------------------------------------------------------------------


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the WebSocket closed"
        data += chunk
    return data


def _send_text(conn: socket.socket, text: str) -> None:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else b""
    assert header, "short messages only"
    conn.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _read_text(conn: socket.socket) -> str:
    first, second = _recv_exact(conn, 2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(_recv_exact(conn, 2), "big")
    elif size == 127:
        size = int.from_bytes(_recv_exact(conn, 8), "big")
    assert first & 0x0F == 1, f"not a text frame: {first:#x}"
    return _recv_exact(conn, size).decode()
