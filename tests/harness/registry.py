"""An OCI registry for tests: the CNCF distribution registry (`registry`, built by
scripts/provision-tools step oci_registry) as a host process on a free loopback port, plain
HTTP, storing blobs under a temporary folder. Charts pushed to it with `helm push --plain-http`
install from `oci://<host>/<repository>/<chart>` as from any registry."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness import waits
from tests.harness.controlplane import _die_with_parent
from tests.harness.loopback import free_port

BINARY = "registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def find_binary() -> str | None:
    """The provisioned registry binary, or None."""
    return shutil.which(BINARY)


def config_text(storage: Path, port: int) -> str:
    """A minimal registry configuration: filesystem storage, loopback, no TLS, no auth."""
    return (
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {storage}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


@dataclass(frozen=True)
class Registry:
    """A running registry; `host` is what `oci://` references and `helm push` take."""

    host: str
    log: Path

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for `repository:tag` (Docker-Content-Digest), asked
        over the distribution API rather than through helm, so helm's own report is checked."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": OCI_MANIFEST},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.headers["Docker-Content-Digest"])

    def tags(self, repository: str) -> list[str]:
        """The tags of `repository`, as the registry lists them."""
        with urllib.request.urlopen(
            f"http://{self.host}/v2/{repository}/tags/list", timeout=10
        ) as answer:
            return list(json.load(answer).get("tags") or [])


def _serving(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running(binary: str, workdir: Path, ceiling: float = waits.CEILING) -> Iterator[Registry]:
    """Starts the registry in `workdir` (config, storage, log) and stops it when the block ends."""
    port = free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(config_text(storage, port))
    log = workdir / "registry.log"
    # No OpenTelemetry exporter: nothing listens for traces, and each failed export is logged.
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,  # a killed test session takes the registry along
        )
    host = f"127.0.0.1:{port}"
    try:

        def serving() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"registry exited {proc.returncode}; log: {log.read_text()}")
            return _serving(host)

        waits.wait_until(serving, f"the registry to serve (log in {log})", ceiling, 0.1)
        yield Registry(host=host, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
