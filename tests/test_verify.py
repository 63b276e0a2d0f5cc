"""verify: the RPC probe against a real HTTP server on loopback playing the ingress, and the
node health `status` reads, from the agave RPC stand-in program."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from laconic_helm.verify import probe_rpc, read_health
from tests.harness.loopback import free_port_pair, serving
from tests.harness.waits import wait_until

pytestmark = pytest.mark.unit

HOST = "rpc.agave.localhost"


class _Ingress(BaseHTTPRequestHandler):
    health: object = "ok"
    bad_gateways = 0  # answers 502 this many times first, as an ingress taking a route in

    def do_POST(self) -> None:
        if self.headers["Host"] != HOST:
            self.send_error(404)
            return
        if _Ingress.bad_gateways > 0:
            _Ingress.bad_gateways -= 1
            self.send_error(502)
            return
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if call["method"] == "getVersion":
            answer = {"jsonrpc": "2.0", "id": 1, "result": {"solana-core": "2.3.13"}}
        elif isinstance(self.health, str):
            answer = {"jsonrpc": "2.0", "id": 1, "result": self.health}
        else:
            answer = {"jsonrpc": "2.0", "id": 1, "error": self.health}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ingress() -> Iterator[str]:
    with serving(_Ingress) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    _Ingress.health = "ok"
    _Ingress.bad_gateways = 0


def test_healthy_node_reports_ok_and_version(ingress: str) -> None:
    probe = asyncio.run(probe_rpc(ingress, HOST))
    assert probe.ok and probe.detail == "getHealth: ok" and probe.version == "2.3.13"


def test_node_behind_is_reported_not_ok(ingress: str) -> None:
    _Ingress.health = {"code": -32005, "message": "Node is behind by 42 slots"}
    probe = asyncio.run(probe_rpc(ingress, HOST))
    assert not probe.ok
    assert probe.detail == "getHealth: Node is behind by 42 slots"


def test_wrong_host_is_an_http_error_once_the_ingress_had_time(ingress: str) -> None:
    started = time.monotonic()
    probe = asyncio.run(probe_rpc(ingress, "other.localhost", settle=2))
    assert not probe.ok and probe.detail == "HTTP 404 from the ingress"
    assert time.monotonic() - started >= 2


def test_a_route_the_ingress_takes_in_late_is_reported_ok(ingress: str) -> None:
    _Ingress.bad_gateways = 2
    probe = asyncio.run(probe_rpc(ingress, HOST, settle=30))
    assert probe.ok and probe.detail == "getHealth: ok"
    assert _Ingress.bad_gateways == 0


def test_nothing_listening_is_unreachable() -> None:
    probe = asyncio.run(probe_rpc("http://127.0.0.1:9/", HOST, settle=0))
    assert not probe.ok and probe.detail.startswith("unreachable")


# -- node health (status), read from the agave RPC stand-in program run here ------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The agave stand-in (scripts/provision-kind builds it) as solana-test-validator: its RPC
    URL and its ledger (where the admin socket is)."""
    binary = shutil.which("agave-standin")
    if binary is None:
        pytest.fail("agave-standin not provisioned (scripts/provision-tools)")
    for attempt in range(3):  # another process may take the picked port before the node binds
        port, ledger = free_port_pair(), tmp_path / f"ledger-{attempt}"
        process = subprocess.Popen(
            [binary, "solana-test-validator", "--rpc-port", str(port), "--ledger", str(ledger)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(
            lambda: (ledger / "admin.rpc").exists() or process.poll() is not None,  # noqa: B023
            "the agave stand-in to start",
        )
        if process.poll() is None:
            break
    else:
        pytest.fail("the agave stand-in exited at start on three free ports")
    try:
        yield f"http://127.0.0.1:{port}/", ledger
    finally:
        process.terminate()
        process.wait(30)


def test_node_health_reads_slot_lag_version_and_identity(node: tuple[str, Path]) -> None:
    url, ledger = node
    health = asyncio.run(read_health(url, None))
    assert health.reachable and health.health == "ok", health
    assert health.slot is not None and health.slot > 0
    assert health.lag is not None and health.lag < 10
    assert health.version and health.identity
    assert f"✓ node agave: ok, slot {health.slot}" in health.line("agave")

    binary = shutil.which("agave-standin")
    assert binary is not None
    subprocess.run(
        [binary, "agave-validator", "--ledger", str(ledger), "standin", "set", "--lag", "500"],
        check=True, capture_output=True,
    )  # fmt: skip
    behind = asyncio.run(read_health(url, None))
    assert behind.reachable and "behind" in behind.health.lower(), behind
    assert behind.lag == 500
    assert behind.as_dict()["lag"] == 500 and behind.line("agave").startswith("! node agave")


def test_an_unreachable_node_is_reported_not_raised() -> None:
    url = f"http://127.0.0.1:{free_port_pair()}/"
    health = asyncio.run(read_health(url, "rpc.agave.localhost"))
    assert not health.reachable and health.health.startswith("unreachable")
    assert health.slot is None and health.lag is None
    assert health.line("agave").startswith("✗ node agave: RPC unreachable")
