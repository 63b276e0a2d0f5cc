"""Every command line the agave chart renders, run by the agave release it defaults to:
agave-validator for rpc and validator modes, solana-test-validator for test mode, both built
from crates.io by `scripts/provision-tools agave`.

Each program runs as the pod would run it: the container's user and capabilities (a bounding
set of just what its securityContext adds, no new privileges), in a network namespace of its own
with only loopback up (no packet can leave the host), its paths moved under a temporary folder,
for a few seconds. A command line the parser rejects fails at once with the parser's usage
error; one it accepts but the pod's capabilities cannot run (agave 4.2 refuses to start without
the capabilities XDP needs) fails with agave's own capability error. Either fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

pytestmark = [pytest.mark.agave, pytest.mark.helm]

CHART = REPO / "charts" / "agave"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# The parser's refusal: clap starts it with "error: " (an unknown flag, a value its check
# refuses); agave's own log lines look otherwise ("[... ERROR ...]").
USAGE_ERROR = re.compile(r"^error: ", re.MULTILINE)
# agave's refusal to run without the capabilities its configuration needs (XDP, niceness).
CAPABILITY_ERROR = re.compile(r"requires the following capabilities")
PANIC = re.compile(r"panicked at")
# What both programs log once their arguments are parsed: proof the run got that far.
STARTED = "Starting validator with"
RUN_SECONDS = 8


@dataclass(frozen=True)
class NodeContainer:
    """What the chart renders for the node container: its command line and who runs it."""

    argv: list[str]
    uid: int
    gid: int
    capabilities: tuple[str, ...]  # added to an emptied set (the chart drops ALL first)


def _node(values_file: str, *extra: str) -> NodeContainer:
    done = subprocess.run(
        ["helm", "template", "node", str(CHART), "-f", str(CHART / "ci" / values_file), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc.get("kind") == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            container = next(c for c in pod["containers"] if c["name"] == "agave")
            context = {
                **(pod.get("securityContext") or {}),
                **(container.get("securityContext") or {}),
            }
            capabilities = context.get("capabilities") or {}
            assert capabilities.get("drop") == ["ALL"], f"{values_file}: capabilities not dropped"
            return NodeContainer(
                [*container["command"], *container.get("args", [])],
                int(context.get("runAsUser", 0)),
                int(context.get("runAsGroup", 0)),
                tuple(capabilities.get("add") or ()),
            )
    raise AssertionError(f"{values_file}: no Deployment rendered")


def _keypair() -> str:
    """A valid keypair file's content (agave checks that the public half matches)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes_raw()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return json.dumps(list(secret + public))


def _localised(argv: list[str], root: Path) -> list[str]:
    """The command with the container's /data and /keys paths under `root` (keypairs made)
    and entrypoints on this host (the parser resolves their names; this host has no DNS)."""
    out: list[str] = []
    for arg in argv:
        arg = arg.replace("$(POD_IP)", "127.0.0.1")  # Kubernetes' expansion, this pod's address
        if out and out[-1] == "--entrypoint":
            arg = f"127.0.0.1:{arg.rpartition(':')[2]}"
        elif arg.startswith(("/data/", "/keys/")):
            path = root / arg.lstrip("/")
            if arg.endswith(".json"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_keypair())
            else:
                path.mkdir(parents=True, exist_ok=True)
            arg = str(path)
        out.append(arg)
    return out


def _run_as_pod(node: NodeContainer, root: Path) -> str:
    """Runs the node's program as its container would (see the module's docstring); its output."""
    argv = _localised(node.argv, root)
    built = shutil.which(argv[0])
    assert built is not None, f"{argv[0]} is not provisioned"
    program = root / "bin" / argv[0]  # where the pod's user may run it, as in the image
    program.parent.mkdir()
    shutil.copy2(built, program)
    subprocess.run(["chown", "-R", f"{node.uid}:{node.gid}", str(root)], check=True)
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in node.capabilities)])
    as_pod = [
        "setpriv", f"--reuid={node.uid}", f"--regid={node.gid}", "--clear-groups",
        f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
        "timeout", "--signal=KILL", str(RUN_SECONDS), str(program), *argv[1:],
    ]  # fmt: skip
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *as_pod],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


def _refusal(output: str, program: str) -> str | None:
    """The line saying why the program refused to run, if it did. solana-test-validator runs
    whole here (its cluster is its own), so a panic of it counts too; agave-validator gets no
    further than its first contact with a cluster, which this host cannot give it."""
    refusals = [USAGE_ERROR, CAPABILITY_ERROR]
    if program == "solana-test-validator":
        refusals.append(PANIC)
    lines = output.splitlines()
    return next((line for line in lines if any(r.search(line) for r in refusals)), None)


@pytest.fixture
def pod_root() -> Iterator[Path]:
    """A folder the pod's user can reach (pytest's own tmp folders are root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="agave-flags-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("values_file", SCENARIOS)
def test_the_real_agave_runs_every_rendered_command_line(values_file: str, pod_root: Path) -> None:
    node = _node(values_file)
    output = _run_as_pod(node, pod_root)
    refused = _refusal(output, node.argv[0])
    assert refused is None, f"{values_file}: {' '.join(node.argv)}: {refused}"
    assert STARTED in output, f"{values_file}: {node.argv[0]} did not start:\n{output[-1500:]}"


@pytest.mark.parametrize(
    ("values_file", "extra", "refused"),
    [
        # removed in 4.0
        ("rpc-values.yaml", ["--set-json", 'flags={"gossip-host":"10.0.0.1"}'], "gossip-host"),
        # XDP (4.2's default) without the capabilities it needs
        ("rpc-values.yaml", ["--set-json", 'flags={"no-xdp":false}'], "capabilities"),
        ("test-values.yaml", ["--set-json", 'flags={"no-such-flag":true}'], "no-such-flag"),
        # 4.x advertises the address it binds: 0.0.0.0 makes solana-test-validator panic
        ("test-values.yaml", ["--set-json", 'flags={"bind-address":"0.0.0.0"}'], "panicked"),
    ],
    ids=[
        "agave-validator-gossip-host",
        "xdp-without-capabilities",
        "solana-test-validator-unknown",
        "solana-test-validator-on-0.0.0.0",
    ],
)
def test_the_check_catches_what_the_release_refuses(
    values_file: str, extra: list[str], refused: str, pod_root: Path
) -> None:
    """The same check fails for a flag agave 4 dropped and for XDP without its capabilities,
    so a pass above means something."""
    node = _node(values_file, *extra)
    found = _refusal(_run_as_pod(node, pod_root), node.argv[0])
    assert found is not None and refused in found, found


def test_the_chart_defaults_to_the_provisioned_agave_release() -> None:
    """The chart's appVersion is the release the tests above ran."""
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    versions = (REPO / "scripts" / "tool-versions").read_text()
    pinned = re.search(r"^AGAVE_VERSION=(\S+)", versions, re.MULTILINE)
    assert pinned is not None
    assert chart["appVersion"] == f"v{pinned[1]}"
    done = subprocess.run(
        ["agave-validator", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.split()[1] == pinned[1]
