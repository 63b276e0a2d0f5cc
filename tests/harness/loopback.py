"""Free loopback ports and throw-away HTTP servers: for the stand-in control plane, and for
tests that play what a deploy talks to (a node's RPC, Caddy in front of it) or start the agave
stand-in on ports of their own."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (another process may take it before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port whose next one is free too: the agave stand-in's WebSocket takes RPC + 1."""
    for _ in range(100):
        port = free_port(host)
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise AssertionError(f"no two free ports in a row on {host}")


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """An HTTP server on a free loopback port answering with `handler` from a thread, until
    the block ends (a test may shut it down earlier, to have nothing listening)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
