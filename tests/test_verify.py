"""verify: the RPC probe against a real HTTP server on loopback playing the ingress."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from laconic_helm.verify import probe_rpc

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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingress)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
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
