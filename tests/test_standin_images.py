"""The stand-in images' programs (tests/images), built with go and run as processes: agave-standin
answers Agave's JSON-RPC, WebSocket and admin socket the way the chart's probes, preStop hook and
the end-to-end tests rely on; kindnet-standin writes the CNI config of a one-node kind cluster."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.deployment_under_test import base58
from tests.harness.loopback import free_port_pair
from tests.harness.waits import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.unit

IMAGES = Path(__file__).resolve().parent / "images"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What the chart passes that the stand-in has no use for: it must take them and go on.
CHART_FLAGS = ("--log", "--bind-address", "0.0.0.0", "--dynamic-port-range", "8000-8020")


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of both built programs, with agave-standin's two install names linked."""
    if shutil.which("go") is None:
        pytest.fail("go is not installed: the stand-in images' programs cannot be built")
    out = tmp_path_factory.mktemp("standin-bin")
    for name in ("agave-standin", "kindnet-standin"):
        built = subprocess.run(
            ["go", "build", "-o", str(out / name), "."],
            cwd=IMAGES / name,
            env={**os.environ, "CGO_ENABLED": "0"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if built.returncode != 0:
            pytest.fail(f"go build {name} failed:\n{built.stderr}")
    for alias in ("solana-test-validator", "agave-validator"):
        (out / alias).symlink_to("agave-standin")
    return out


class Running:
    """A started process whose stdout is collected line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr: Path) -> None:
        self.stderr = stderr
        with stderr.open("w") as sink:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=sink, text=True, env=env
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join([*self.lines, self.stderr.read_text()])

    def wait_for_line(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = not self._reader.is_alive()  # before the look, so no last line is missed
            found = [line for line in self.lines if needle in line]
            if found:
                return found[0]
            if ended:
                break
            time.sleep(0.05)
        pytest.fail(f"no line with {needle!r} within {timeout} s; output:\n{self.output()}")

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s; output:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def close(self) -> None:
        """Kills the process if it still runs, and lets go of its output."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts processes with extra environment; whatever still runs at the end is killed."""
    started: list[Running] = []

    def start(argv: list[str | Path], **env: str) -> Running:
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        running = Running([str(a) for a in argv], {**os.environ, **env}, stderr)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


# --- agave-standin ------------------------------------------------------------------------


def http_request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def post(port: int, payload: Any) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, body = http_request(port, "POST", "/", raw)
    assert status == 200, body
    return json.loads(body)


def call(method: str, params: list[Any] | None = None, id_: int = 1) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        request["params"] = params
    return request


@dataclass
class Node:
    run: Running
    port: int
    ledger: Path
    binaries: Path

    def rpc(self, method: str, params: list[Any] | None = None) -> dict[str, Any]:
        """The whole JSON-RPC response, error or result."""
        return post(self.port, call(method, params))

    def result(self, method: str, params: list[Any] | None = None) -> Any:
        response = self.rpc(method, params)
        assert "error" not in response, response
        return response["result"]

    def shred_lag(self) -> int:
        """How far the highest shred is ahead of the slot, asked in that order: the slot only
        grows, so the answer is never too high."""
        slot = self.result("getSlot", [{"commitment": "processed"}])
        return self.result("getMaxShredInsertSlot") - slot

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """`agave-validator --ledger LEDGER ARGS`, run the way tests may: named as argument 1."""
        return run_agave_validator(
            self.binaries, "--ledger", str(self.ledger), *args, timeout=timeout
        )

    def standin(self, *args: str) -> dict[str, Any]:
        done = self.cli("standin", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def run_agave_validator(
    binaries: Path, *args: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries / "agave-standin"), "agave-validator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _answers(node: Node) -> str | None:
    """ "up" once the node answers RPC, "exited" when it never will, None meanwhile."""
    try:
        node.result("getSlot")
        return "up"
    except OSError:
        return "exited" if node.run.proc.poll() is not None else None


@pytest.fixture
def start_node(
    binaries: Path, tmp_path: Path, launch: Callable[..., Running]
) -> Callable[..., Node]:
    """Starts the node under one of its install names, with a fresh ledger, once it answers."""

    def start(*flags: str, program: str = "solana-test-validator", **env: str) -> Node:
        for _ in range(3):  # another process may take the picked port before the node binds
            port = free_port_pair("0.0.0.0")
            ledger = tmp_path / "ledger"  # made by the node
            argv = [binaries / program, "--rpc-port", str(port), "--ledger", ledger, *flags]
            node = Node(launch(argv, **env), port, ledger, binaries)
            answer = wait_until(lambda: _answers(node), "the node to answer", why=node.run.output)  # noqa: B023
            if answer == "up":
                return node
            shutil.rmtree(ledger, ignore_errors=True)
        pytest.fail(f"the node exited at start on three free ports; output:\n{node.run.output()}")

    return start


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, str]:
    """A keypair file and its base58 pubkey; zero bytes first in the pubkey become '1's."""
    key = os.urandom(32) + b"\0\0" + os.urandom(30)
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(list(key)))
    return path, base58(key[32:])


def test_a_fresh_node_is_healthy_and_says_who_it_is(
    start_node: Callable[..., Node], keypair: tuple[Path, str]
) -> None:
    path, pubkey = keypair
    node = start_node(*CHART_FLAGS, "--identity", str(path))

    assert node.result("getHealth") == "ok"
    assert http_request(node.port, "GET", "/health") == (200, "ok")
    assert node.result("getIdentity") == {"identity": pubkey}
    assert pubkey.startswith("11")
    assert node.result("getVersion")["solana-core"]
    assert node.standin("get")["identity"] == pubkey


def test_the_slot_advances_and_every_slot_method_agrees(start_node: Callable[..., Node]) -> None:
    node = start_node()
    first = node.result("getSlot", [{"commitment": "processed"}])
    time.sleep(1.0)
    slot, height, epoch, shreds = (
        r["result"]
        for r in post(
            node.port,
            [
                call("getSlot", id_=1),
                call("getBlockHeight", id_=2),
                call("getEpochInfo", id_=3),
                call("getMaxShredInsertSlot", id_=4),
            ],
        )
    )
    # Answered in order, at most a slot apart.
    assert slot >= first + 2
    assert slot <= height <= epoch["absoluteSlot"] <= shreds <= slot + 1


def test_lag_makes_the_node_unhealthy_until_it_is_cleared(start_node: Callable[..., Node]) -> None:
    node = start_node()

    assert node.standin("set", "--lag", "500")["lag"] == 500
    health = node.rpc("getHealth")
    assert health["error"] == {
        "code": -32005,
        "message": "Node is behind by 500 slots",
        "data": {"numSlotsBehind": 500},
    }
    assert node.shred_lag() >= 500
    assert http_request(node.port, "GET", "/health") == (200, "behind")
    node.run.wait_for_line("lag 500")

    assert node.standin("set", "--lag", "0")["lag"] == 0
    assert node.result("getHealth") == "ok"
    assert http_request(node.port, "GET", "/health") == (200, "ok")


def test_the_health_check_slot_distance_and_initial_lag_are_honoured(
    start_node: Callable[..., Node],
) -> None:
    node = start_node("--health-check-slot-distance", "1000", STANDIN_LAG="500")

    assert node.result("getHealth") == "ok"
    assert node.standin("get")["lag"] == 500
    assert node.shred_lag() >= 500


def test_bad_requests_get_json_rpc_errors(start_node: Callable[..., Node]) -> None:
    node = start_node()

    assert node.rpc("getNothing")["error"]["code"] == -32601
    assert post(node.port, b'{"jsonrpc": "2.0", "id": 1, "meth')["error"]["code"] == -32700
    assert post(node.port, [])["error"]["code"] == -32600


class WebSocket:
    """Just enough of a WebSocket client (RFC 6455) to check the node's server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = []
        while (line := self.reader.readline().decode()) not in ("\r\n", ""):
            head.append(line.strip())
        self.status_line = head[0]
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        digest = hashlib.sha1((key + WS_GUID).encode()).digest()
        self.expected_accept = base64.b64encode(digest).decode()

    def send(self, payload: bytes, opcode: int = 0x1, fin: bool = True) -> None:
        mask = os.urandom(4)
        header = bytes([(0x80 if fin else 0) | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> tuple[int, bytes]:
        first, second = self.reader.read(2)
        assert second & 0x80 == 0, "server frames are not masked"
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(self.reader.read(2 if length == 126 else 8), "big")
        return first & 0x0F, self.reader.read(length)

    def receive_json(self) -> dict[str, Any]:
        opcode, payload = self.receive()
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_websocket_slot_subscription_notifies_new_slots(start_node: Callable[..., Node]) -> None:
    node = start_node()
    ws = WebSocket(node.port + 1)
    try:
        assert ws.status_line.startswith("HTTP/1.1 101")
        assert ws.headers["sec-websocket-accept"] == ws.expected_accept

        # In two fragments with a ping between them, as RFC 6455 allows.
        request = json.dumps(call("slotSubscribe", id_=7)).encode()
        ws.send(request[:10], fin=False)
        ws.send(b"are you there", opcode=0x9)
        ws.send(request[10:], opcode=0x0)
        assert ws.receive() == (0xA, b"are you there")
        reply = ws.receive_json()
        assert reply["id"] == 7
        subscription = reply["result"]

        note = ws.receive_json()
        assert note["method"] == "slotNotification"
        assert note["params"]["subscription"] == subscription
        slot = note["params"]["result"]
        assert slot["parent"] == slot["slot"] - 1
        assert slot["root"] < slot["slot"]
        assert ws.receive_json()["params"]["result"]["slot"] > slot["slot"]

        ws.send(json.dumps(call("slotUnsubscribe", [subscription], id_=8)).encode())
        while (reply := ws.receive_json()).get("id") != 8:
            assert reply["method"] == "slotNotification"
        assert reply["result"] is True

        ws.send(json.dumps(call("getHealth", id_=9)).encode())
        assert ws.receive_json() == {"jsonrpc": "2.0", "result": "ok", "id": 9}

        ws.send((1000).to_bytes(2, "big"), opcode=0x8)
        assert ws.receive() == (0x8, (1000).to_bytes(2, "big"))
    finally:
        ws.close()


def test_plain_http_on_the_websocket_port_is_refused(start_node: Callable[..., Node]) -> None:
    node = start_node()
    status, body = http_request(node.port + 1, "GET", "/")
    assert status == 400
    assert "WebSocket upgrade" in body
    assert body.count("\n") == 1


def test_wait_for_restart_window_blocks_until_the_window_opens(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    assert node.standin("set", "--restart-window-in", "3")["restartWindowIn"] == 3

    began = time.monotonic()
    done = node.cli("wait-for-restart-window", "--min-idle-time", "10", "--skip-new-snapshot-check")
    waited = time.monotonic() - began

    assert done.returncode == 0, done.stderr
    assert waited >= 2
    lines = done.stdout.splitlines()
    assert "waiting for a restart window" in lines[0]
    assert lines[-1] == "restart window open"
    assert node.standin("get")["restartWindowIn"] == 0


@pytest.mark.parametrize(
    ("window", "flags"),
    [("0", ()), ("600", ("--force",))],
    ids=["window-open", "force-skips-the-window"],
)
def test_exit_stops_the_node_and_removes_its_admin_socket(
    start_node: Callable[..., Node],
    keypair: tuple[Path, str],
    window: str,
    flags: tuple[str, ...],
) -> None:
    # As in the chart's rpc mode: agave-validator with its identity, stopped by its preStop hook.
    node = start_node(
        *CHART_FLAGS,
        "--identity",
        str(keypair[0]),
        "--no-voting",
        program="agave-validator",
        STANDIN_RESTART_WINDOW_IN=window,
    )
    assert (node.ledger / "admin.rpc").is_socket()

    done = node.cli("exit", *flags, timeout=10)

    assert done.returncode == 0, done.stderr
    assert "Validator exit requested" in done.stdout
    assert node.run.wait(timeout=5) == 0
    assert not (node.ledger / "admin.rpc").exists()
    node.run.wait_for_line("exit requested")
    node.run.wait_for_line("shut down")


def test_exit_with_no_node_running_fails_with_one_line(binaries: Path, tmp_path: Path) -> None:
    done = run_agave_validator(binaries, "--ledger", str(tmp_path), "exit", "--force")

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "admin.rpc" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("monitor",), ("exit", "--no-such-flag"), ("standin", "set")],
    ids=["unsupported-subcommand", "unknown-flag", "nothing-to-set"],
)
def test_client_usage_errors_exit_2(binaries: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    done = run_agave_validator(binaries, "--ledger", str(tmp_path), *args)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1


def test_ledger_may_follow_the_subcommand(start_node: Callable[..., Node]) -> None:
    node = start_node()
    done = run_agave_validator(node.binaries, "standin", "get", f"--ledger={node.ledger}")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["slot"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_node_cleanly(start_node: Callable[..., Node], sig: int) -> None:
    node = start_node()

    assert node.run.stop(sig) == 0
    assert not (node.ledger / "admin.rpc").exists()
    node.run.wait_for_line("shutting down")
    node.run.wait_for_line("shut down")


def test_logs_stream_while_the_node_runs(start_node: Callable[..., Node]) -> None:
    node = start_node(*CHART_FLAGS)

    startup = node.run.wait_for_line("starting with arguments")
    assert all(f'"{flag}"' in startup for flag in CHART_FLAGS)
    first = node.run.wait_for_line("new slot", timeout=3)
    assert first.startswith("[") and " INFO  agave_standin] " in first
    # Two more within a few seconds: lines are not held back in a buffer.
    deadline = time.monotonic() + 5
    while sum("new slot" in line for line in node.run.lines) < 3:
        assert time.monotonic() < deadline, node.run.output()
        time.sleep(0.05)


# --- kindnet-standin ----------------------------------------------------------------------


def expected_conflist(subnet: str) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "kindnet",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": "/run/cni-ipam-state",
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def test_kindnet_writes_the_ipv4_conflist_and_runs_until_sigterm(
    binaries: Path, tmp_path: Path, launch: Callable[..., Running]
) -> None:
    netd = tmp_path / "net.d"
    config = netd / "10-kindnet.conflist"
    env = {"POD_SUBNET": "10.244.0.0/16,fd00:10:244::/56", "CNI_CONFIG_PATH": str(config)}

    first = launch([binaries / "kindnet-standin"], **env)
    wait_until(
        config.exists, "kindnet-standin to write its config", interval=0.05, why=first.output
    )
    assert json.loads(config.read_text()) == expected_conflist("10.244.0.0/16")
    assert [p.name for p in netd.iterdir()] == [config.name]
    time.sleep(0.3)
    assert first.proc.poll() is None
    assert first.stop() == 0

    # The same subnet again: the file is left as it is (a rename would give a new inode).
    inode = config.stat().st_ino
    second = launch([binaries / "kindnet-standin"], **env)
    wait_until(
        lambda: "up to date" in second.stderr.read_text(),
        "kindnet-standin to find its config up to date",
        interval=0.05,
        why=second.output,
    )
    assert second.stop() == 0
    assert config.stat().st_ino == inode


@pytest.mark.parametrize("pod_subnet", ["", "10.244.0.0", "fd00:10:244::/56"])
def test_kindnet_refuses_a_missing_or_unusable_pod_subnet(
    binaries: Path, tmp_path: Path, pod_subnet: str
) -> None:
    config = tmp_path / "10-kindnet.conflist"
    done = subprocess.run(
        [str(binaries / "kindnet-standin")],
        env={**os.environ, "POD_SUBNET": pod_subnet, "CNI_CONFIG_PATH": str(config)},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "POD_SUBNET" in done.stderr
    assert not config.exists()
