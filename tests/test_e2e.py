"""The operator's whole job on real kind: from no cluster to a node serving JSON-RPC through
Caddy, with the real charts, the real Caddy ingress controller (built from its source) and the
agave RPC stand-in (tests/images/agave-standin; what it cannot show is in tests/README.md).

One module-wide deployment, made by the real CLI (tests/harness/e2e.py); each test then looks
at it the way an operator would: requests from the host through kind's port mapping, `helm
test`, `status`, `logs`, re-runs, the probes and the stop hook. Tests that disturb the node put
it back and wait until it serves again.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm import handoff
from tests.harness import e2e, laconic_so, nodes, realkind, registry
from tests.harness.client import Client
from tests.harness.deployment_under_test import Deployment, Run, keypair_bytes, release_secrets
from tests.harness.loopback import free_port
from tests.harness.pytest_fixtures import KindCLI

pytestmark = pytest.mark.cluster

# Probes a test can wait out: the chart's defaults (15 s x 3) are for a real node.
FAST_PROBES = {
    "probes": {
        "startup": {"periodSeconds": 2},
        "readiness": {"periodSeconds": 2, "failureThreshold": 1},
    }
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[e2e.Node]:
    root = tmp_path_factory.mktemp("e2e")
    with e2e.deployed(root, f"e2e-{os.environ[nodes.OWNER_ENV]}-node", agave=FAST_PROBES) as made:
        yield made


def test_deploy_from_no_cluster_serves_json_rpc_through_caddy(node: e2e.Node) -> None:
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


def test_the_verify_step_reaches_the_node_through_the_ingress(node: e2e.Node) -> None:
    verify = [s for s in node.first.report["steps"] if s["name"].startswith("verify")]
    assert verify, node.first.report["steps"]
    assert all(s["status"] == "ok" for s in verify), verify


def test_the_websocket_route_reaches_the_node(node: e2e.Node) -> None:
    # Caddy closes its WebSockets with 1001 (going away) when the controller reloads its
    # config, as it may right after a deploy: a client connects again, and so does this test.
    for _ in range(3):
        try:
            reply, notification = _subscribe(node)
            break
        except GoingAway:
            time.sleep(1)
    else:
        raise AssertionError("Caddy closed every WebSocket with 1001")
    assert reply["id"] == 7 and isinstance(reply["result"], int)
    assert notification["method"] == "slotNotification"


class GoingAway(Exception):
    """The server closed the WebSocket with status 1001."""


def _subscribe(node: e2e.Node) -> tuple[dict[str, Any], dict[str, Any]]:
    """slotSubscribe through Caddy's WebSocket route: the answer and the first notification."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as conn:
        conn.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: {e2e.WS_HOST}\r\nUpgrade: websocket\r\n"
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
        return json.loads(_read_text(conn)), json.loads(_read_text(conn))


def test_helm_test_passes_for_both_releases(node: e2e.Node) -> None:
    for release, namespace in (("caddy-ingress", "caddy-system"), ("agave", "agave")):
        done = node.helm("test", release, "--namespace", namespace, "--timeout", "180s", "--logs")
        assert done.returncode == 0, f"{release}: {done.stdout}{done.stderr}"
        assert "Phase:          Succeeded" in done.stdout, done.stdout


def test_status_shows_both_workloads_ready(node: e2e.Node) -> None:
    status = node.deployment.run("status")
    assert status.code == 0, status.stderr
    releases = {r["release"]: r for r in status.report["releases"]}
    assert set(releases) == {"caddy-ingress", "agave"}
    for release in releases.values():
        assert release["status"] == "deployed", release
        assert release["workloads"] and all(release["workloads"].values()), release
    # The node's own view, read through Caddy: its identity is the keypair's.
    health = releases["agave"]["node"]
    assert health["reachable"] and health["health"] == "ok", health
    assert health["slot"] > 0 and health["lag"] is not None and health["version"]
    assert health["identity"] == node.rpc("getIdentity")["result"]["identity"]
    assert "✓ node agave: ok, slot" in status.stderr
    # The ledger's free space, as the node sees it.
    (ledger,) = [v for v in releases["agave"]["volumes"] if v["volume"] == "ledger"]
    assert ledger["path"] == "/data/ledger" and 0 < ledger["free"] <= ledger["total"], ledger
    assert f"volume ledger (/data/ledger in {ledger['pod']})" in status.stderr


def test_logs_print_the_nodes_own_lines_and_follow_stops_on_ctrl_c(node: e2e.Node) -> None:
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


def test_the_kubelet_rotates_container_logs_as_the_spec_says(node: e2e.Node) -> None:
    config = node.api().harness.get(f"/api/v1/nodes/{node.node}/proxy/configz")["kubeletconfig"]
    assert (config["containerLogMaxSize"], config["containerLogMaxFiles"]) == ("200Mi", 5)


def test_logs_since_keeps_only_recent_lines(node: e2e.Node) -> None:
    time.sleep(4)  # the node has logged for longer than the window by now
    started = time.time()
    logs = node.deployment.run("logs", "--since", "3", json_output=True)
    assert logs.code == 0, logs.stderr
    stamps = [_stamp(entry["line"]) for entry in logs.report["entries"]]
    stamps = [t for t in stamps if t is not None]
    assert stamps, logs.report
    assert min(stamps) >= started - 3 - 2, "a line older than --since"  # 2 s of clock slack


def test_status_watch_refreshes_until_ctrl_c(node: e2e.Node) -> None:
    watch = subprocess.Popen(
        node.deployment.argv("status", "--watch", "--interval", "1", json_output=False),
        env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watch.stderr is not None
        deadline, rounds = time.monotonic() + 60, 0
        while rounds < 2 and time.monotonic() < deadline:
            if watch.stderr.readline().startswith("✓ node agave: ok"):
                rounds += 1
        assert rounds == 2, "no second refresh"
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, err  # Ctrl-C is how a watch ends
    assert "Traceback" not in err


RERUNS = 5


def test_reruns_change_nothing_write_nothing_and_send_no_image_bytes(node: e2e.Node) -> None:
    api = node.api()
    history = {r: _revisions(node, r) for r in e2e.NAMESPACES}
    mark = api.mark()
    for _ in range(RERUNS):
        again = node.deployment.run("deploy")
        assert again.code == 0, again.stderr
        assert again.report["changed"] is False, again.report
        images = next(s for s in again.report["steps"] if s["name"].startswith("images"))
        assert [i["bytes_sent"] for i in images["data"]["images"]] == [0, 0, 0], images
    assert api.writes_since(mark) == []
    assert (
        {r: _revisions(node, r) for r in e2e.NAMESPACES}
        == history
        == {
            "caddy-ingress": 1,
            "agave": 1,
        }
    )
    plan = node.deployment.run("plan")
    assert plan.code == 0 and plan.report["actions"] == [], plan.report
    assert api.writes_since(mark) == []


def test_caddys_health_probes_pass(node: e2e.Node) -> None:
    (pod,) = _workload_pods(node, "caddy-system", "caddy-ingress")
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "controller"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert _ready(pod)
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "controller"]
    assert status["ready"], status
    # The liveness probe never failed: it waits for the start-up probe (without one, a
    # controller still starting on a loaded node was killed by it once, then came up).
    name = pod["metadata"]["name"]
    events = node.api().harness.get(
        f"/api/v1/namespaces/caddy-system/events?fieldSelector=involvedObject.name%3D{name}"
    )["items"]
    liveness = [e["message"] for e in events if e["message"].startswith("Liveness probe failed")]
    assert not liveness, liveness


def test_test_mode_readiness_follows_get_health(node: e2e.Node) -> None:
    """solana-test-validator behind by more than its health-check distance answers getHealth
    with an error: the pod leaves the Service (Caddy stops routing) and comes back when the
    node catches up."""
    (pod,) = _workload_pods(node, "agave", "agave")
    name = pod["metadata"]["name"]
    try:
        _standin_set(node, "agave", name, "--lag", "500")
        _eventually(lambda: not _ready(_pod(node, "agave", name)), "the pod to turn unready")
        _eventually(lambda: _endpoints_ready(node, "agave", "agave") == 0, "Caddy's route to go")
    finally:
        _standin_set(node, "agave", name, "--lag", "0")
    _eventually(lambda: _ready(_pod(node, "agave", name)), "the pod to be ready again")
    node.wait_serving()
    assert node.rpc("getHealth")["result"] == "ok"


RPC_NAMESPACE = "agave-rpc"
# rpc mode requests a real RPC host's cores and memory by default; the stand-in needs little.
SMALL_NODE = {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}


@pytest.fixture(scope="module")
def rpc_node(node: e2e.Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The agave chart installed by hand in rpc mode (agave-validator, the preStop hook, the
    slot-lag readiness check) beside the module's node; yields its pod's name."""
    image, tag = e2e.repo_tag(realkind.test_images()["agave"])
    values = {
        "mode": "rpc",
        "image": {"repository": image, "tag": tag},
        "identity": {"keypair": keypair_bytes("rpc-node").decode()},
        "volumes": {v: {"type": "emptyDir"} for v in ("ledger", "accounts", "snapshots")},
        "terminationGracePeriodSeconds": 300,
        **SMALL_NODE,
        **FAST_PROBES,
    }
    with _agave_by_hand(node, "rpc", RPC_NAMESPACE, values, tmp_path_factory.mktemp("rpc"), 180):
        (pod,) = _workload_pods(node, RPC_NAMESPACE, "rpc")
        yield pod["metadata"]["name"]


@contextlib.contextmanager
def _agave_by_hand(
    node: e2e.Node, name: str, namespace: str, values: dict[str, Any], folder: Path, wait: int
) -> Iterator[None]:
    """The agave chart installed with `helm upgrade --install --wait` beside the module's
    node, as an operator would by hand; uninstalled with its namespace afterwards."""
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        done = node.helm(
            "upgrade", "--install", name, str(e2e.REPO / "charts" / "agave"),
            "--namespace", namespace, "--create-namespace", "-f", str(path),
            "--wait", "--timeout", f"{wait}s",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield
    finally:
        node.helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "120s")
        node.kubectl("delete", "namespace", namespace, "--wait=false")


def test_rpc_mode_readiness_follows_the_slot_lag(node: e2e.Node, rpc_node: str) -> None:
    assert _ready(_pod(node, RPC_NAMESPACE, rpc_node))
    _standin_set(node, RPC_NAMESPACE, rpc_node, "--lag", "200")  # over maxSlotLag (150)
    _eventually(lambda: not _ready(_pod(node, RPC_NAMESPACE, rpc_node)), "the pod to turn unready")
    _standin_set(node, RPC_NAMESPACE, rpc_node, "--lag", "100")  # behind, within the limit
    _eventually(lambda: _ready(_pod(node, RPC_NAMESPACE, rpc_node)), "the pod to be ready again")


def test_deleting_the_pod_runs_the_exit_hook_well_within_the_grace_period(
    node: e2e.Node, rpc_node: str
) -> None:
    follow = subprocess.Popen(
        [e2e.tool("kubectl"), "--kubeconfig", str(node.kubeconfig), "logs", "-f",
         "--namespace", RPC_NAMESPACE, rpc_node],
        env=node.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        done = node.kubectl(
            "delete", "pod", rpc_node, "--namespace", RPC_NAMESPACE, "--wait=true",
            "--timeout", "300s",
        )  # fmt: skip
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        log, _ = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert "validator exit requested through the admin socket" in log, log[-2000:]
    assert "closing the ledger before exiting" in log
    assert "received terminated" not in log  # the hook stopped it, not the kubelet's SIGTERM
    assert took < 120, f"the pod took {took:.0f} s of its 300 s grace period to go"


def test_logs_previous_show_the_instance_before_a_restart(node: e2e.Node) -> None:
    (pod,) = _workload_pods(node, "agave", "agave")
    name = pod["metadata"]["name"]
    done = node.kubectl(
        "exec", "--namespace", "agave", name, "--", "agave-validator", "exit", "--force"
    )
    assert done.returncode == 0, done.stderr

    def restarted() -> bool:
        found = _pod(node, "agave", name)
        statuses = found.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("restartCount", 0) >= 1 and _ready(found)

    _eventually(restarted, "the node's container to restart", timeout=120)
    logs = node.deployment.run("logs", "--previous", json_output=False)
    assert logs.code == 0, logs.stderr
    assert "validator exit requested through the admin socket" in logs.stdout
    current = node.deployment.run("logs", json_output=False)
    assert "validator exit requested" not in current.stdout
    node.wait_serving()


# -- restart windows: an upgrade of a serving rpc node waits for one ----------------------------

WINDOW_NAMESPACE = "agave-rw"


@pytest.fixture(scope="module")
def window_node(node: e2e.Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second spec on the module's cluster: one agave release `rw` in rpc mode (the RPC
    stand-in's `agave-validator wait-for-restart-window`), deployed by the driver; yields the
    spec's path, which the tests rewrite."""
    doc = yaml.safe_load(node.deployment.spec.read_text())
    agave = next(r for r in doc["releases"] if r["name"] == e2e.AGAVE)
    values = {
        "mode": "rpc",
        "image": agave["values"]["image"],
        "tests": agave["values"]["tests"],
        "identity": {"existingSecret": e2e.IDENTITY_SECRET},
        "volumes": {v: {"type": "emptyDir"} for v in ("ledger", "accounts", "snapshots")},
        "terminationGracePeriodSeconds": 300,  # the chart's floor in rpc mode
        "restartWindow": {"minIdleTime": 1, "timeout": 300},
        **SMALL_NODE,
        **FAST_PROBES,
    }
    release = {
        "name": "rw",
        "chart": agave["chart"],
        "namespace": WINDOW_NAMESPACE,
        "values": values,
        "secrets": agave["secrets"],
        "timeout": 180,
    }
    path = tmp_path_factory.mktemp("window") / "deployment.yaml"
    path.write_text(yaml.safe_dump({**doc, "releases": [release]}, sort_keys=False))
    first = _window_deploy(node, path)
    assert first.code == 0, f"{first.error}\n{first.stderr}"
    yield path
    node.helm("uninstall", "rw", "--namespace", WINDOW_NAMESPACE, "--wait", "--timeout", "120s")
    node.kubectl("delete", "namespace", WINDOW_NAMESPACE, "--wait=false")


def _window_deploy(node: e2e.Node, path: Path, *args: str, rollout: str | None = None) -> Run:
    """Deploys the window spec, its pod template changed by a `rollout` annotation if given."""
    if rollout is not None:
        doc = yaml.safe_load(path.read_text())
        doc["releases"][0]["values"]["podAnnotations"] = {"example.com/rollout": rollout}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    deployment = Deployment(path, node.cluster, node.env)
    return deployment.run("deploy", *args, timeout=600)


def _release_step(run: Run, name: str) -> dict[str, Any]:
    """The data of a release's step in the JSON report (actions, revision, restart_wait)."""
    return next(s["data"] for s in run.report["steps"] if s["name"] == f"release {name}")


def _serving_pod(node: e2e.Node) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def one_ready() -> bool:
        found[:] = [p for p in _workload_pods(node, WINDOW_NAMESPACE, "rw") if _ready(p)]
        return len(found) == 1

    _eventually(one_ready, "the rw node to serve", timeout=120)
    return found[0]


def test_an_upgrade_restarting_a_serving_rpc_node_waits_for_its_restart_window(
    node: e2e.Node, window_node: Path
) -> None:
    """The node reports its next leader slot 20 s away: the deploy shows what it waits for,
    restarts the pod only once the window opened, and reports how long it waited."""
    before = _serving_pod(node)
    name = before["metadata"]["name"]
    _standin_set(node, WINDOW_NAMESPACE, name, "--restart-window-in", "20")
    asked = time.monotonic()
    run = _window_deploy(node, window_node, rollout="1")
    assert run.code == 0, f"{run.error}\n{run.stderr}"
    step = _release_step(run, "rw")
    assert step["actions"][0].startswith(
        f"release/rw: wait-restart-window {WINDOW_NAMESPACE}/{name}"
    )
    assert step["actions"][-1].startswith("release/rw: upgrade-release")
    # The window opened 20 s after it was asked for; the deploy waited out what was left.
    assert 20 - (time.monotonic() - asked) < step["restart_wait"] <= 25
    print(f"restart window wait: {step['restart_wait']:.1f} s")
    assert f"waiting for a restart window of {WINDOW_NAMESPACE}/{name}: 1 min idle" in run.stderr
    assert "next leader slot in" in run.stderr  # the node's own progress, relayed
    assert "restart window open after" in run.stderr
    after = _serving_pod(node)
    assert after["metadata"]["name"] != name
    assert after["metadata"]["annotations"]["example.com/rollout"] == "1"


def test_no_window_before_the_deadline_stops_with_exit_3_and_restarts_nothing(
    node: e2e.Node, window_node: Path
) -> None:
    pod = _serving_pod(node)
    _standin_set(node, WINDOW_NAMESPACE, pod["metadata"]["name"], "--restart-window-in", "600")
    revisions = len(release_secrets(node.api(), WINDOW_NAMESPACE, "rw"))
    stopped = _window_deploy(node, window_node, "--deadline", "45", rollout="2")
    assert stopped.code == 3, stopped.stderr
    assert "no restart window" in stopped.error and "--deadline" in stopped.error
    assert "--no-restart-window" in stopped.error
    assert len(release_secrets(node.api(), WINDOW_NAMESPACE, "rw")) == revisions
    still = _pod(node, WINDOW_NAMESPACE, pod["metadata"]["name"])
    assert still["metadata"]["uid"] == pod["metadata"]["uid"] and _ready(still)

    skipped = _window_deploy(node, window_node, "--no-restart-window")
    assert skipped.code == 0, f"{skipped.error}\n{skipped.stderr}"
    verbs = [a.split()[1] for a in _release_step(skipped, "rw")["actions"]]
    assert "wait-restart-window" not in verbs and "upgrade-release" in verbs
    assert _serving_pod(node)["metadata"]["uid"] != pod["metadata"]["uid"]


# -- the real agave release in test mode ------------------------------------------------------

REAL_NAMESPACE = "agave-real"


REGISTRY_NAMESPACE = "agave-rg"


@pytest.fixture(scope="module")
def registry_node(node: e2e.Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A third spec on the module's cluster in registry mode: the agave test node `rg`, its
    image pushed to a local registry container (the distribution registry built from its Go
    module) and pulled by the kind node; yields the spec's path."""
    doc = yaml.safe_load(node.deployment.spec.read_text())
    agave = next(r for r in doc["releases"] if r["name"] == e2e.AGAVE)
    image = agave["values"]["image"]
    with realkind.docker_host():
        registry_image = registry.ensure_registry_image()
    release = {k: v for k, v in agave.items() if k != "verify"}
    release.update(
        name="rg",
        namespace=REGISTRY_NAMESPACE,
        images=[f"{image['repository']}:{image['tag']}"],
        values={**agave["values"], **SMALL_NODE, **FAST_PROBES},
    )
    delivery = {"mode": "registry", "local": {"port": free_port(), "image": registry_image}}
    path = tmp_path_factory.mktemp("registry") / "deployment.yaml"
    spec = {**doc, "images": release["images"], "imageDelivery": delivery, "releases": [release]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    yield path
    node.helm("uninstall", "rg", "--namespace", REGISTRY_NAMESPACE, "--wait", "--timeout", "120s")
    node.kubectl("delete", "namespace", REGISTRY_NAMESPACE, "--wait=false")
    container = f"{node.cluster}-registry"
    for args in (("rm", "-f", container), ("volume", "rm", "-f", container)):
        subprocess.run(["docker", *args], env=node.env, capture_output=True, check=False)


def test_in_registry_mode_pods_run_the_image_the_node_pulled_by_digest(
    node: e2e.Node, registry_node: Path
) -> None:
    deployment = Deployment(registry_node, node.cluster, node.env)
    first = deployment.run("deploy", timeout=600)
    assert first.code == 0, f"{first.error}\n{first.stderr}"
    step = next(s for s in first.report["steps"] if s["name"].startswith("images via localhost:"))
    (pushed,) = step["data"]["images"]
    reference = pushed["reference"]
    port = yaml.safe_load(registry_node.read_text())["imageDelivery"]["local"]["port"]
    assert reference.startswith(f"localhost:{port}/") and "@sha256:" in reference
    assert pushed["status"] == "push-image" and pushed["bytes_pushed"] > 0
    assert pushed["nodes"] == {node.node: "pull-image"}

    pods = _workload_pods(node, REGISTRY_NAMESPACE, "rg")
    assert pods and all(_ready(p) for p in pods)
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {reference}
    statuses = [c for p in pods for c in p["status"]["containerStatuses"]]
    assert {c["imageID"].rsplit("@", 1)[-1] for c in statuses} == {reference.rsplit("@", 1)[1]}
    held = subprocess.run(
        ["docker", "exec", node.node, "ctr", "-n", "k8s.io", "images", "ls", "-q"],
        env=node.env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert reference in held

    again = deployment.run("deploy", timeout=600)
    assert again.code == 0, f"{again.error}\n{again.stderr}"
    assert again.report["changed"] is False
    step = next(s for s in again.report["steps"] if s["name"].startswith("images via localhost:"))
    assert step["data"]["images"][0]["bytes_pushed"] == 0
    assert step["data"]["images"][0]["nodes"] == {node.node: "up-to-date"}


def _rpc_in_pod(node: e2e.Node, namespace: str, pod: str, method: str) -> Any:
    """A JSON-RPC call made inside the node's pod (busybox wget), so no port is published."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method})
    done = node.kubectl(
        "exec", "--namespace", namespace, pod, "--", "wget", "-q", "-O-",
        "--header", "Content-Type: application/json", "--post-data", body,
        "http://127.0.0.1:8899/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["result"]


@pytest.mark.agave
def test_the_real_solana_test_validator_serves_in_test_mode(node: e2e.Node, tmp_path: Path) -> None:
    """The chart's test mode with the agave release it defaults to (built from crates.io), not
    the stand-in: it starts, turns ready on its own health, passes `helm test`, makes slots."""
    real = realkind.test_images().get("agave-real")
    assert real, (
        "no real agave image: scripts/provision-kind test_images makes it once agave is built"
    )
    load = subprocess.run(
        [sys.executable, "-m", "laconic_helm", "-v", "images", "load", "--cluster", node.cluster,
         real],
        env=node.env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr
    # The driver made this kind cluster: its node reads the stream from a FIFO it mounts.
    assert re.search(rf"images import --snapshotter \S+ {handoff.IN_NODE}/", load.stderr)
    assert "exec -i" not in load.stderr
    image, tag = e2e.repo_tag(real)
    busybox, busybox_tag = e2e.repo_tag(realkind.test_images()["busybox"])
    values = {
        "mode": "test",
        "image": {"repository": image, "tag": tag},
        "tests": {"image": {"repository": busybox, "tag": busybox_tag}},
        **FAST_PROBES,
    }
    with _agave_by_hand(node, "real", REAL_NAMESPACE, values, tmp_path, 240):
        tested = node.helm("test", "real", "--namespace", REAL_NAMESPACE, "--timeout", "180s")
        assert tested.returncode == 0, tested.stdout + tested.stderr
        (pod,) = _workload_pods(node, REAL_NAMESPACE, "real")
        name = pod["metadata"]["name"]
        assert _rpc_in_pod(node, REAL_NAMESPACE, name, "getHealth") == "ok"
        version = _rpc_in_pod(node, REAL_NAMESPACE, name, "getVersion")
        assert version["solana-core"] == tag.lstrip("v")
        first = _rpc_in_pod(node, REAL_NAMESPACE, name, "getSlot")
        _eventually(lambda: _rpc_in_pod(node, REAL_NAMESPACE, name, "getSlot") > first, "a slot")


# -- the takeover of a running laconic-so node (a cluster of its own) -------------------------

LACONIC_SO_HOST = "biscayne.example.org"  # the fixture's http-proxy host name
OLD_GRACE = 600  # the grace period the import gives laconic-so's node


def test_import_and_adopt_take_a_running_laconic_so_node_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", realkind.DOCKER_HOST)
    kind = KindCLI(e2e.tool("kind"), tmp_path / "kubeconfig", standin=False)
    cluster = kind.new_name("takeover")
    images = realkind.test_images()
    # The certificate backup's kubectl image, as the imported Caddy values name it.
    subprocess.run(
        ["docker", "tag", images["kubectl"], CERT_BACKUP_IMAGE],
        env=realkind.docker_env(), check=True,
    )  # fmt: skip
    deployment = laconic_so.stage_on_kind(tmp_path, cluster, images["agave"])
    config = yaml.safe_load((deployment / "kind-config.yml").read_text())
    http_port = next(
        m["hostPort"] for m in config["nodes"][0]["extraPortMappings"] if m["containerPort"] == 80
    )
    ledger = tmp_path / "srv" / "kind" / "solana" / "ledger"
    try:
        kind.run(
            "create", "cluster", "--name", cluster, "--config", f"{deployment}/kind-config.yml"
        )
        api = kind.api(cluster)
        env = realkind.docker_env(
            {
                **os.environ,
                "KUBECONFIG": str(tmp_path / "kubeconfig"),
                "LACONIC_HELM_STATE": str(tmp_path / "state"),
                "LACONIC_HELM_HELM": e2e.tool("helm"),
            }
        )
        loaded = _cli(env, "images", "load", "--cluster", cluster, images["caddy"],
                      CERT_BACKUP_IMAGE, images["agave"])  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr

        # laconic-so's node runs: on the node's host ports, its ledger in the host folder.
        seeded = laconic_so.seed(api.harness, deployment)
        ns, old = seeded.namespace, seeded.deployments["agave"]
        old_pod = _eventually_found(
            lambda: [p for p in _pods(api.harness, ns, f"{old}-") if _running(p)],
            "laconic-so's agave pod to run",
        )[0]["metadata"]["name"]
        _eventually(lambda: (ledger / "admin.rpc").exists(), "the old node's ledger on the host")
        data = {
            f: (f / "laconic-so-data.bin").read_bytes() for f in laconic_so.data_folders(deployment)
        }
        cert = f"/api/v1/namespaces/caddy-system/secrets/{laconic_so.CERT_SECRET}"
        cert_uid = api.harness.get(cert)["metadata"]["uid"]

        out = tmp_path / "helm"
        imported = _cli(env, "import", "laconic-so", "--dir", str(deployment), "--out", str(out))
        assert imported.returncode == 0, imported.stderr
        _serve_plain_http(out / "agave.yaml")
        node = e2e.Node(tmp_path, Deployment(out / "deployment.yaml", cluster, env), http_port,
                        tmp_path / "no-audit-log")  # fmt: skip
        with _PodWatch(api.harness, ns) as watch:
            done = node.deployment.run("deploy", "--adopt-cluster", timeout=900)
            assert done.code == 0, f"{done.error}\n{done.stderr}"
            new_pod = _eventually_found(
                lambda: [p for p in _pods(api.harness, ns, "agave-") if _running(p)],
                "the release's agave pod to run",
            )[0]
            node.wait_serving(host=LACONIC_SO_HOST, timeout=120)
        for refusal in ("AlreadyExists", "already exists", "invalid ownership metadata"):
            assert refusal not in done.stdout + done.stderr

        # The old node stopped with its long grace period, and the new one started after it.
        assert watch.grace.get(old_pod) == OLD_GRACE, watch.grace
        gone = watch.gone[old_pod]
        started = _started_at(new_pod)
        assert started >= gone - 1, f"the new node started {gone - started:.1f} s before"
        # Nothing of the host's data or of Caddy's certificates was lost.
        assert {f: (f / "laconic-so-data.bin").read_bytes() for f in data} == data
        assert api.harness.get(cert)["metadata"]["uid"] == cert_uid
        assert (ledger / "admin.rpc").exists()  # the new node's ledger is the same folder
        assert node.rpc("getHealth", host=LACONIC_SO_HOST)["result"] == "ok"
    finally:
        kind.run("delete", "cluster", "--name", cluster, check=False)


CERT_BACKUP_IMAGE = "alpine/kubectl:1.35.3"


def _serve_plain_http(values: Path) -> None:
    """The one value an operator adds on this offline host: the public name gets no
    certificate here, so Caddy serves it on plain HTTP instead of redirecting to HTTPS."""
    doc = yaml.safe_load(values.read_text())
    doc["ingress"]["annotations"] = {"caddy.ingress.kubernetes.io/disable-ssl-redirect": "true"}
    values.write_text(yaml.safe_dump(doc, sort_keys=False))


class _PodWatch:
    """Polls a namespace's pods in the background: the grace period each pod's deletion asked
    for, and when each pod was last seen (monotonic clock mapped to wall time)."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client, self.namespace = client, namespace
        self.grace: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                now = time.time()
                pods = self.client.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
                names = set()
                for pod in pods:
                    name = pod["metadata"]["name"]
                    names.add(name)
                    self.seen[name] = now
                    grace = pod["metadata"].get("deletionGracePeriodSeconds")
                    if grace is not None:
                        self.grace.setdefault(name, int(grace))
                for name in self.seen.keys() - names - self.gone.keys():
                    self.gone[name] = now
            time.sleep(0.2)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "laconic_helm", *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _pods(client: Client, namespace: str, prefix: str) -> list[dict[str, Any]]:
    return [
        p
        for p in client.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        if p["metadata"]["name"].startswith(prefix) and not p["metadata"].get("deletionTimestamp")
    ]


def _running(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in s.get("state", {}) for s in statuses)


def _started_at(pod: dict[str, Any]) -> float:
    stamp = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _eventually_found(find: Callable[[], list[dict[str, Any]]], what: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = find()
        return bool(found)

    _eventually(check, what, timeout=180)
    return found


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
    payload = _recv_exact(conn, size)
    if first & 0x0F == 8 and payload[:2] == (1001).to_bytes(2, "big"):
        raise GoingAway
    assert first & 0x0F == 1, f"not a text frame: {first:#x} {payload!r}"
    return payload.decode()


def _revisions(node: e2e.Node, release: str) -> int:
    done = node.helm("history", release, "--namespace", e2e.NAMESPACES[release], "-o", "json")
    assert done.returncode == 0, done.stderr
    return len(json.loads(done.stdout))


def _pod(node: e2e.Node, namespace: str, name: str) -> dict[str, Any]:
    return dict(node.api().harness.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))


def _workload_pods(node: e2e.Node, namespace: str, instance: str) -> list[dict[str, Any]]:
    """The running pods of a release's Deployment (helm test pods left out)."""
    selector = f"app.kubernetes.io/instance%3D{instance}"
    items = node.api().harness.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
    return [
        p
        for p in items["items"]
        if any(o["kind"] == "ReplicaSet" for o in p["metadata"].get("ownerReferences", []))
        and not p["metadata"].get("deletionTimestamp")
    ]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _endpoints_ready(node: e2e.Node, namespace: str, service: str) -> int:
    slices = node.api().harness.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        f"?labelSelector=kubernetes.io/service-name%3D{service}"
    )
    return sum(
        bool(e.get("conditions", {}).get("ready"))
        for s in slices["items"]
        for e in s.get("endpoints") or []
    )


def _standin_set(node: e2e.Node, namespace: str, pod: str, *flags: str) -> None:
    """Changes what the running stand-in reports, through its admin socket in the pod."""
    done = node.kubectl(
        "exec", "--namespace", namespace, pod, "--",
        "agave-validator", "standin", "set", *flags,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _stamp(line: str) -> float | None:
    """The time of an agave log line ("[2026-12-06T08:00:00.000Z INFO ...]"), if it has one."""
    found = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", line)
    if found is None:
        return None
    return datetime.datetime.fromisoformat(found[1] + "+00:00").timestamp()
