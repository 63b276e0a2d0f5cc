"""The agave chart, rendered and linted with real Helm 4 and Helm 3, and its probe script run."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from tests.charts_support import (
    CHARTS,
    Scenario,
    all_scenarios,
    ci_by_name,
    of_kind,
    one,
    pod_annotations,
    pod_spec,
    render,
    render_error,
    workload,
)
from tests.harness.loopback import serving

if TYPE_CHECKING:
    pass

CHART = "agave"
DEFAULTS = Scenario(CHART, ())
SCENARIOS = all_scenarios(CHART)
CI = ci_by_name(CHART)
KEYPAIR_SCENARIOS = [CI["rpc-keypair-values"], CI["validator-keypair-values"]]
REAL_NODE = ("rpc", "validator")

pytestmark = pytest.mark.helm


def node(docs: list[dict]) -> dict:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "agave")


def mode(scenario: Scenario) -> str:
    return scenario.values().get("mode", "test")


def arg_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_one_pod_that_never_surges(helm_bin: str, scenario: Scenario) -> None:
    spec = workload(render(helm_bin, scenario))["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_defaults_create_a_kept_claim_for_the_ledger(helm_bin: str) -> None:
    claims = of_kind(render(helm_bin, DEFAULTS), "PersistentVolumeClaim")
    assert [c["metadata"]["name"] for c in claims] == ["rel-agave-ledger"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_real_nodes_exit_cleanly_before_they_are_killed(helm_bin: str, scenario: Scenario) -> None:
    docs = render(helm_bin, scenario)
    container = node(docs)
    if mode(scenario) in REAL_NODE:
        assert pod_spec(docs)["terminationGracePeriodSeconds"] >= 300
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:2] == ["bash", "/scripts/stop.sh"]
        stop = one(docs, "ConfigMap")["data"]["stop.sh"]
        assert 'agave-validator --ledger "$ledger" exit "$@"' in stop
    else:
        assert "lifecycle" not in container


def test_short_grace_period_is_refused_for_real_nodes(helm_bin: str) -> None:
    error = render_error(helm_bin, CI["rpc-values"], "terminationGracePeriodSeconds=60")
    assert "terminationGracePeriodSeconds is 60" in error and "at least 300" in error


def test_exit_flags_reach_the_hook(helm_bin: str) -> None:
    hook = node(render(helm_bin, CI["rpc-keypair-values"]))["lifecycle"]["preStop"]["exec"][
        "command"
    ]
    assert hook[2:] == ["--force", "--skip-health-check", "--skip-new-snapshot-check"]
    hook = node(render(helm_bin, CI["validator-values"]))["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[2:] == ["--min-idle-time", "5"]


def test_too_small_port_range_is_refused_by_name(helm_bin: str) -> None:
    error = render_error(helm_bin, DEFAULTS, "ports.dynamicPortRange=8000-8020")
    assert "ports.dynamicPortRange" in error and "20 ports wide" in error and "8000-8026" in error


def test_port_inside_the_dynamic_range_is_refused(helm_bin: str) -> None:
    error = render_error(helm_bin, DEFAULTS, "ports.gossip=9010")
    assert "ports.gossip (9010) lies inside ports.dynamicPortRange" in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("mode=rpc",), "rpc mode needs an identity keypair"),
        (
            ("mode=validator", "identity.existingSecret=id"),
            "validator mode needs a vote account keypair",
        ),
        (
            ("identity.existingSecret=id", "identity.keypair=[1]"),
            "either identity.existingSecret or identity.keypair",
        ),
        (("hostNetwork=true", "hostPorts=true"), "either hostNetwork or hostPorts"),
        (("image.tag=latest",), 'image.tag must be a pinned tag, not "latest"'),
        (("volumes.ledger.type=existingClaim",), "volumes.ledger.existingClaim must name a claim"),
    ],
)
def test_inconsistent_values_are_refused_with_the_fix(
    helm_bin: str, sets: tuple[str, ...], message: str
) -> None:
    assert message in render_error(helm_bin, DEFAULTS, *sets)


def test_flags_render_in_a_stable_order_and_merge_over_the_charts(helm_bin: str) -> None:
    args = node(render(helm_bin, CI["test-pvc-values"]))["args"]
    flags = [a for a in args if a.startswith("--")]
    assert flags == sorted(flags)
    assert arg_value(args, "--limit-ledger-size") == "50000000"  # no 5e+07
    assert [args[i + 1] for i, a in enumerate(args) if a == "--account-index"] == [
        "program-id",
        "spl-token-owner",
    ]
    assert "--reset" not in args
    # The same flags given in another order render the same arguments.
    reordered = node(
        render(
            helm_bin,
            DEFAULTS,
            "flags.slots-per-epoch=64",
            "flags.account-index={program-id,spl-token-owner}",
            "flags.limit-ledger-size=50000000",
            "volumes.ledger.type=pvc",
        )
    )["args"]
    assert reordered == args


def test_operator_flags_override_and_drop_the_charts(helm_bin: str) -> None:
    args = node(
        render(
            helm_bin, CI["rpc-values"], "flags.no-voting=false", "flags.rpc-bind-address=127.0.0.1"
        )
    )["args"]
    assert "--no-voting" not in args
    assert arg_value(args, "--rpc-bind-address") == "127.0.0.1"


def test_test_mode_binds_the_test_validator_to_the_pods_address(helm_bin: str) -> None:
    """solana-test-validator 4 advertises the address it binds: the pod's IP, never 0.0.0.0."""
    container = node(render(helm_bin, DEFAULTS))
    assert container["command"] == ["solana-test-validator"]
    assert arg_value(container["args"], "--bind-address") == "$(POD_IP)"
    pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert arg_value(container["args"], "--rpc-port") == "8899"
    assert "--log" in container["args"]


@pytest.mark.parametrize("scenario", [CI["rpc-values"], CI["validator-values"]], ids=lambda s: s.id)
def test_real_modes_run_agave_validator(helm_bin: str, scenario: Scenario) -> None:
    container = node(render(helm_bin, scenario))
    args = container["args"]
    assert container["command"] == ["agave-validator"]
    assert arg_value(args, "--identity") == "/keys/identity/identity.json"
    assert arg_value(args, "--dynamic-port-range") == "9000-9026"
    assert arg_value(args, "--gossip-port") == "8001"
    if mode(scenario) == "validator":
        assert arg_value(args, "--vote-account") == "/keys/vote/vote-account.json"
        assert "--no-voting" not in args
    else:
        assert "--no-voting" in args and "--vote-account" not in args


def test_identity_from_an_existing_secret_is_mounted_read_only(helm_bin: str) -> None:
    docs = render(helm_bin, CI["validator-values"])
    assert not of_kind(docs, "Secret")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["identity"]["secret"] == {
        "secretName": "agave-identity",
        "defaultMode": 0o400,
        "items": [{"key": "identity.json", "path": "identity.json"}],
    }
    assert volumes["vote"]["secret"]["items"] == [{"key": "vote.json", "path": "vote-account.json"}]
    mounts = {m["name"]: m for m in node(docs)["volumeMounts"]}
    assert mounts["identity"] == {
        "name": "identity",
        "mountPath": "/keys/identity",
        "readOnly": True,
    }
    assert mounts["vote"]["readOnly"] is True


def test_keypairs_from_values_become_secrets_with_mode_0600(helm_bin: str) -> None:
    scenario = CI["validator-keypair-values"]
    docs = render(helm_bin, scenario)
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    assert set(secrets) == {"rel-agave-identity", "rel-agave-vote"}
    key = base64.b64decode(secrets["rel-agave-identity"]["data"]["identity.json"]).decode()
    assert key == scenario.values()["identity"]["keypair"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["identity"]["secret"]["defaultMode"] == 0o600


@pytest.mark.parametrize("scenario", KEYPAIR_SCENARIOS, ids=lambda s: s.id)
def test_keypairs_appear_in_no_object_but_their_secret(helm_bin: str, scenario: Scenario) -> None:
    values = scenario.values()
    keys = [values[k]["keypair"] for k in ("identity", "vote") if values.get(k, {}).get("keypair")]
    forms = [
        form
        for key in keys
        for form in (key, base64.b64encode(key.encode()).decode(), key.replace(",", ", "))
    ]
    for doc in render(helm_bin, scenario):
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        assert not any(form in text for form in forms), (
            f"keypair in {doc['kind']} {doc['metadata']['name']}"
        )


@pytest.mark.parametrize("scenario", KEYPAIR_SCENARIOS, ids=lambda s: s.id)
def test_keypairs_stay_out_of_notes_and_environment(scenario: Scenario) -> None:
    # `helm install --dry-run=client` renders NOTES without a cluster only in Helm 4.
    helm = shutil.which("helm")
    assert helm is not None
    done = subprocess.run(
        [
            helm,
            "install",
            "rel",
            str(CHARTS / CHART),
            "--dry-run=client",
            "-o",
            "json",
            *scenario.values_args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    release = json.loads(done.stdout)
    key = scenario.values()["identity"]["keypair"]
    assert key not in release["info"]["notes"]
    assert (
        "identity.keypair stores the private key in the release record" in release["info"]["notes"]
    )
    env = node(render(helm, scenario))["env"]
    assert all(key not in json.dumps(variable) for variable in env)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_probes_read_the_rpc_body_instead_of_http_status(helm_bin: str, scenario: Scenario) -> None:
    container = node(render(helm_bin, scenario))
    probes = {
        name: container[name]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
        if name in container
    }
    assert {"startupProbe", "readinessProbe"} <= set(probes)
    for probe in probes.values():
        assert probe["exec"]["command"][:2] == ["bash", "/scripts/probe.sh"]
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_security_matches_the_mode(helm_bin: str, scenario: Scenario) -> None:
    docs = render(helm_bin, scenario)
    values = scenario.values()
    # io_uring is blocked by the runtime's default profile and agave 4 needs it in every mode:
    # only the node container goes without it.
    assert pod_spec(docs)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = node(docs)["securityContext"]
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"].get("add", []))
    expected = {"IPC_LOCK", "SYS_NICE"} if mode(scenario) in REAL_NODE else set()
    if values.get("xdp"):
        expected |= {"NET_ADMIN", "NET_RAW"}
    assert added == expected
    assert "privileged" not in context
    assert context["allowPrivilegeEscalation"] is False


def test_runtime_class_and_sysctl_init_are_optional(helm_bin: str) -> None:
    spec = pod_spec(render(helm_bin, CI["rpc-values"]))
    assert spec["runtimeClassName"] == "high-memlock"
    init = spec["initContainers"][0]
    assert init["securityContext"]["privileged"] is True
    assert init["securityContext"]["runAsUser"] == 0
    assert "vm.max_map_count=1000000" in init["command"]
    plain = pod_spec(render(helm_bin, DEFAULTS))
    assert "runtimeClassName" not in plain and "initContainers" not in plain


def test_host_network_publishes_the_node_ports(helm_bin: str) -> None:
    spec = pod_spec(render(helm_bin, CI["rpc-values"]))
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    ports = node(render(helm_bin, CI["rpc-values"]))["ports"]
    assert all(p["hostPort"] == p["containerPort"] for p in ports)


def test_host_ports_cover_the_whole_dynamic_range(helm_bin: str) -> None:
    ports = node(render(helm_bin, CI["test-hostports-values"]))["ports"]
    dynamic = sorted(p["hostPort"] for p in ports if p["name"].startswith("dyn-"))
    assert dynamic == list(range(19000, 19030))
    assert {p["hostPort"] for p in ports if not p["name"].startswith("dyn-")} == {
        18899,
        18900,
        18001,
    }


def test_volume_types(helm_bin: str) -> None:
    rpc = {v["name"]: v for v in pod_spec(render(helm_bin, CI["rpc-values"]))["volumes"]}
    assert rpc["ledger"]["hostPath"] == {"path": "/mnt/agave/ledger", "type": "DirectoryOrCreate"}
    assert rpc["accounts"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "200Gi"}
    keyed = render(helm_bin, CI["rpc-keypair-values"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(keyed)["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {
        "ledger": "rel-agave-ledger",
        "accounts": "agave-accounts",
        "snapshots": "rel-agave-snapshots",
    }
    ledger = one(keyed, "PersistentVolumeClaim", "rel-agave-ledger")["spec"]
    assert (
        ledger["storageClassName"] == "local-nvme"
        and ledger["resources"]["requests"]["storage"] == "500Gi"
    )
    test_mounts = [m["mountPath"] for m in node(render(helm_bin, DEFAULTS))["volumeMounts"]]
    assert "/data/accounts" not in test_mounts and "/data/ledger" in test_mounts


def test_rpc_and_websocket_get_separate_routes(helm_bin: str) -> None:
    docs = render(helm_bin, CI["test-ingress-values"])
    ingresses = {i["metadata"]["name"]: i for i in of_kind(docs, "Ingress")}
    assert set(ingresses) == {"rel-agave-rpc", "rel-agave-ws"}
    for name, port, host in (
        ("rel-agave-rpc", 8899, "rpc.agave.example.org"),
        ("rel-agave-ws", 8900, "ws.agave.example.org"),
    ):
        spec = ingresses[name]["spec"]
        assert spec["ingressClassName"] == "caddy"
        assert "kubernetes.io/ingress.class" not in ingresses[name]["metadata"].get(
            "annotations", {}
        )
        assert spec["rules"][0]["host"] == host
        assert spec["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"] == port
        assert spec["tls"] == [{"hosts": [host]}]


def test_websocket_shares_a_host_on_its_own_path(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS, "ingress.enabled=true", "ingress.rpc.hosts={rpc.example.org}")
    paths = {
        i["metadata"]["name"]: i["spec"]["rules"][0]["http"]["paths"][0]["path"]
        for i in of_kind(docs, "Ingress")
    }
    assert paths == {"rel-agave-rpc": "/", "rel-agave-ws": "/ws"}
    error = render_error(
        helm_bin,
        DEFAULTS,
        "ingress.enabled=true",
        "ingress.rpc.hosts={rpc.example.org}",
        "ingress.ws.path=/",
    )
    assert "the WebSocket needs its own route" in error


def test_changed_scripts_or_keys_roll_the_pod(helm_bin: str) -> None:
    def annotations(*sets: str) -> dict[str, str]:
        return pod_annotations(render(helm_bin, CI["rpc-keypair-values"], *sets))

    base = annotations()
    assert {"checksum/scripts", "checksum/keys"} <= set(base)
    rotated = annotations("identity.keypair=[1\\,2\\,3]")
    assert rotated["checksum/keys"] != base["checksum/keys"]
    assert rotated["checksum/scripts"] == base["checksum/scripts"]


def test_helm_test_calls_the_rpc_through_the_service(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS)
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    service = one(docs, "Service")
    assert f"http://{service['metadata']['name']}:8899/" in script
    assert "getVersion" in script and "getHealth" in script and '"result":"ok"' in script


# probe.sh runs with bash in the node container; here it talks to a small JSON-RPC server that
# answers like agave (HTTP 200 whatever the health), so the script's checks are what is tested.
class FakeRpc(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, object]] = {}

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        result = self.answers[request["method"]]
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                **(result if isinstance(result, dict) else {"result": result}),
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rpc_server() -> Iterator[ThreadingHTTPServer]:
    with serving(FakeRpc) as server:
        yield server
    server.server_close()


def probe(
    port: int, check: str, mode: str, answers: dict[str, object], max_lag: int = 150
) -> subprocess.CompletedProcess[str]:
    FakeRpc.answers = answers
    env = {
        "PATH": "/usr/bin:/bin",
        "RPC_PORT": str(port),
        "MODE": mode,
        "MAX_SLOT_LAG": str(max_lag),
    }
    script = CHARTS / CHART / "files" / "probe.sh"
    return subprocess.run(
        ["bash", str(script), check],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )


UNHEALTHY = {
    "error": {"code": -32005, "message": "Node is unhealthy", "data": {"numSlotsBehind": 42}}
}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("check", "mode", "answers", "ready"),
    [
        ("alive", "rpc", {"getSlot": 1234}, True),
        ("alive", "rpc", {"getSlot": UNHEALTHY}, False),
        ("ready", "test", {"getHealth": "ok"}, True),
        ("ready", "test", {"getHealth": UNHEALTHY}, False),
        ("ready", "rpc", {"getSlot": 1000, "getMaxShredInsertSlot": 1100}, True),
        ("ready", "rpc", {"getSlot": 1000, "getMaxShredInsertSlot": 1151}, False),
        ("ready", "validator", {"getSlot": 1000, "getMaxShredInsertSlot": UNHEALTHY}, False),
    ],
    ids=["alive", "alive-error", "test-ok", "test-unhealthy", "rpc-close", "rpc-behind", "no-tip"],
)
def test_probe_fails_when_the_node_is_not_healthy(
    rpc_server: ThreadingHTTPServer, check: str, mode: str, answers: dict[str, object], ready: bool
) -> None:
    done = probe(rpc_server.server_address[1], check, mode, answers)
    assert (done.returncode == 0) is ready, done.stderr


@pytest.mark.unit
def test_probe_fails_when_nothing_listens(rpc_server: ThreadingHTTPServer) -> None:
    port = rpc_server.server_address[1]
    rpc_server.shutdown()
    rpc_server.server_close()
    assert probe(port, "alive", "rpc", {}).returncode != 0


# stop.sh runs as the preStop hook. The stand-in `agave-validator` CLI below answers `exit` at
# once and stops the validator a second later (as agave 2.x does), so the hook must wait.
FAKE_AGAVE_CLI = """#!/bin/sh
printf '%s ' "$@" > "$RECORD"
setsid sh -c "sleep 1; kill $VALIDATOR_PID" >/dev/null 2>&1 &
"""


@pytest.mark.unit
def test_stop_hook_asks_for_exit_and_waits_until_the_validator_is_gone(tmp_path: Path) -> None:
    cli_dir, process_dir = tmp_path / "bin", tmp_path / "proc"
    cli_dir.mkdir()
    process_dir.mkdir()
    cli = cli_dir / "agave-validator"
    cli.write_text(FAKE_AGAVE_CLI)
    cli.chmod(0o755)
    # A process whose name is agave-validator, as the node's PID 1 is.
    sleeper = process_dir / "agave-validator"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleeper)
    validator = subprocess.Popen([str(sleeper), "60"])
    reaper = threading.Thread(target=validator.wait, daemon=True)
    reaper.start()
    env = {
        "PATH": f"{cli_dir}:/usr/bin:/bin",
        "LEDGER": "/data/ledger",
        "RECORD": str(tmp_path / "args"),
        "VALIDATOR_PID": str(validator.pid),
    }
    script = CHARTS / CHART / "files" / "stop.sh"
    try:
        done = subprocess.run(
            ["bash", str(script), "--force"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert validator.poll() is not None, "the hook returned while the validator still ran"
        assert (tmp_path / "args").read_text().split() == [
            "--ledger",
            "/data/ledger",
            "exit",
            "--force",
        ]
    finally:
        validator.kill()
        reaper.join(5)
