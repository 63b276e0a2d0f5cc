"""Every command line the agave chart renders, through the argument parser of the agave release
it defaults to: agave-validator for rpc and validator modes, solana-test-validator for test mode,
both built from crates.io by `scripts/provision-tools agave`.

The node is never started for real: each program runs in a network namespace of its own with
no interface up (no packet can leave), its paths moved under a temporary folder. A command line
the parser accepts gets past parsing and fails later, at its first socket, or is still starting
when the short time limit ends it; one it rejects fails at once with the parser's usage error,
which is what the tests look for.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

pytestmark = [pytest.mark.agave, pytest.mark.helm]

CHART = REPO / "charts" / "agave"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# clap's closing line after a usage error (v2 and v4 spellings).
USAGE_ERROR = re.compile(r"For more information,? try")
RUN_SECONDS = 8


def _node_command(values_file: str) -> list[str]:
    """The node container's command and arguments as the chart renders them."""
    done = subprocess.run(
        ["helm", "template", "node", str(CHART), "-f", str(CHART / "ci" / values_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc.get("kind") == "Deployment":
            container = next(
                c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "agave"
            )
            return [*container["command"], *container.get("args", [])]
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
    """The command with the container's /data and /keys paths under `root` (keypairs made)."""
    out = []
    for arg in argv:
        if arg.startswith(("/data/", "/keys/")):
            path = root / arg.lstrip("/")
            if arg.endswith(".json"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_keypair())
            else:
                path.mkdir(parents=True, exist_ok=True)
            arg = str(path)
        out.append(arg)
    return out


def _parse(argv: list[str], root: Path) -> tuple[bool, str]:
    """Runs the program on `argv` with no network; (accepted by its parser, output)."""
    program = shutil.which(argv[0])
    assert program is not None, f"{argv[0]} is not provisioned"
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            "timeout",
            "--signal=KILL",
            str(RUN_SECONDS),
            program,
            *argv[1:],
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    return USAGE_ERROR.search(output) is None, output


def _first_error(output: str) -> str:
    return next((line for line in output.splitlines() if "error" in line.lower()), output[-300:])


@pytest.mark.parametrize("values_file", SCENARIOS)
def test_the_real_agave_accepts_every_rendered_command_line(
    values_file: str, tmp_path: Path
) -> None:
    argv = _localised(_node_command(values_file), tmp_path)
    accepted, output = _parse(argv, tmp_path)
    assert accepted, (
        f"{values_file}: {argv[0]} refuses {' '.join(argv[1:])}: {_first_error(output)}"
    )


@pytest.mark.parametrize(
    ("values_file", "extra", "refused"),
    [
        ("rpc-values.yaml", ["--gossip-host", "10.0.0.1"], "gossip-host"),  # removed in 4.0
        ("test-values.yaml", ["--no-such-flag"], "no-such-flag"),
    ],
    ids=["agave-validator-gossip-host", "solana-test-validator-unknown"],
)
def test_the_check_catches_a_flag_the_release_refuses(
    values_file: str, extra: list[str], refused: str, tmp_path: Path
) -> None:
    """The same check fails for a flag agave 4 dropped, so a pass above means something."""
    argv = _localised(_node_command(values_file), tmp_path) + extra
    accepted, output = _parse(argv, tmp_path)
    assert not accepted and refused in output


def test_the_chart_defaults_to_the_provisioned_agave_release() -> None:
    """The chart's appVersion is the release whose parser the tests above ran."""
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    versions = (REPO / "scripts" / "tool-versions").read_text()
    pinned = re.search(r"^AGAVE_VERSION=(\S+)", versions, re.MULTILINE)
    assert pinned is not None
    assert chart["appVersion"] == f"v{pinned[1]}"
    done = subprocess.run(
        ["agave-validator", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.split()[1] == pinned[1]
