"""An OCI registry for tests: the CNCF distribution registry (`registry`, built by
scripts/provision-tools step oci_registry) as a host process on a free loopback port, plain
HTTP, storing blobs under a temporary folder. Charts pushed to it with `helm push --plain-http`
install from `oci://<host>/<repository>/<chart>` as from any registry.

The same binary also goes into an image (`ensure_registry_image`) built offline, which keeps the
official `registry:2` image's contract: it serves on port 5000 and keeps its data in
/var/lib/registry, so whatever runs one can run the other."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness import nodes, waits
from tests.harness.controlplane import _die_with_parent
from tests.harness.loopback import free_port

BINARY = "registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

IMAGE_REPO = "laconic-helm-test/registry"
# Where the image listens and keeps its data: the official registry image's port and folder.
IMAGE_PORT = 5000
IMAGE_STORAGE = "/var/lib/registry"
IMAGE_BINARY = "/bin/registry"
IMAGE_CONFIG = "/etc/distribution/config.yml"
# The image's settings; as for the host process, no trace exporter: nothing listens for traces,
# and each failed export is logged.
IMAGE_CHANGES = (
    f'CMD ["{IMAGE_BINARY}", "serve", "{IMAGE_CONFIG}"]',
    "ENV OTEL_TRACES_EXPORTER=none",
)


def find_binary() -> str | None:
    """The provisioned registry binary, or None."""
    return shutil.which(BINARY)


def config_text(storage: Path | str, addr: str) -> str:
    """A minimal registry configuration: filesystem storage under `storage`, listening on
    `addr`, no TLS, no auth."""
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
        f"  addr: {addr}\n"
    )


def _image_tar(binary: Path, config: bytes) -> bytes:
    """The image's whole filesystem: the static binary, its config and the (empty) storage."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folders = ("bin", "etc", "etc/distribution", "var", "var/lib", IMAGE_STORAGE.lstrip("/"))
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        info = tar.gettarinfo(str(binary), arcname=IMAGE_BINARY.lstrip("/"))
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755
        with binary.open("rb") as program:
            tar.addfile(info, program)
        info = tarfile.TarInfo(IMAGE_CONFIG.lstrip("/"))
        info.size = len(config)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(config))
    return buf.getvalue()


def ensure_registry_image() -> str:
    """Builds the registry image once per binary and settings (offline, with `docker import`,
    on whichever daemon the docker CLI targets) and returns its tag."""
    found = find_binary()
    if found is None:
        raise RuntimeError(f"{BINARY} is not provisioned: run scripts/provision-tools oci_registry")
    binary = Path(found).resolve()
    config = config_text(IMAGE_STORAGE, f":{IMAGE_PORT}").encode()
    digest = hashlib.sha256(binary.read_bytes())
    for part in (config, *(change.encode() for change in IMAGE_CHANGES)):
        digest.update(part)
    tag = f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"
    if nodes.docker("images", "-q", tag).strip():
        return tag
    changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
    nodes.docker("import", *changes, "-", tag, input=_image_tar(binary, config))
    return tag


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


def answers(host: str) -> bool:
    """True when a registry serves the distribution API at `host`."""
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
    config.write_text(config_text(storage, f"127.0.0.1:{port}"))
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
            return answers(host)

        waits.wait_until(serving, f"the registry to serve (log in {log})", ceiling, 0.1)
        yield Registry(host=host, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
