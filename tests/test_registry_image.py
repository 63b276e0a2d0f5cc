"""The registry image the harness builds offline (tests/harness/registry.py): run the way a
driver runs the official `registry:2` image, it takes a `docker push` over plain HTTP on
loopback, serves the manifest, and keeps it in its volume across a new container."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import urllib.request
import uuid

import pytest

from tests.harness import nodes, registry, waits
from tests.harness.loopback import free_port

pytestmark = pytest.mark.docker

# What docker 20.10+ pushes, and the OCI form in case a newer one pushes that instead.
MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, " + registry.OCI_MANIFEST
PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def _tiny_image(tag: str) -> None:
    """A one-file image made offline with `docker import`, something to push."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        content = f"pushed by {tag}\n".encode()
        info = tarfile.TarInfo("hello")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    nodes.docker("import", "-", tag, input=buf.getvalue())


def _run_registry(image: str, name: str, volume: str) -> str:
    """Runs the image as a driver would (loopback port to 5000, the volume on its storage) and
    returns the host:port it serves on once it answers."""
    owner = os.environ.get(nodes.OWNER_ENV) or str(os.getpid())
    for _ in range(3):  # another process may take the picked port before docker binds it
        port = free_port()
        started = subprocess.run(
            [
                "docker", "run", "-d", "--name", name,
                "--label", f"{nodes.HARNESS_LABEL}={owner}",
                "-p", f"127.0.0.1:{port}:{registry.IMAGE_PORT}",
                "-v", f"{volume}:{registry.IMAGE_STORAGE}",
                image,
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if started.returncode == 0:
            break
        nodes.docker("rm", "-f", name, check=False)
        if "already" not in started.stderr:  # "port is already allocated", "already in use"
            raise RuntimeError(f"docker run {image}: {started.stderr}")
    else:
        raise RuntimeError(f"no free loopback port for {name}: {started.stderr}")
    host = f"127.0.0.1:{port}"

    def serving() -> bool:
        if nodes.docker("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
            raise RuntimeError(f"{name} exited: {nodes.docker('logs', name, check=False)}")
        return registry.answers(host)

    waits.wait_until(serving, f"the registry container {name} to serve on {host}")
    return host


def _manifest_digest(host: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        return str(answer.headers["Docker-Content-Digest"])


def test_registry_image_serves_a_push_and_keeps_it_in_its_volume() -> None:
    image = registry.ensure_registry_image()
    assert registry.ensure_registry_image() == image  # built once per binary
    unique = uuid.uuid4().hex[:8]
    volume = f"laconic-helm-test-registry-{unique}"
    first, second = f"{volume}-a", f"{volume}-b"
    local = f"laconic-helm-test/pushed-{unique}:1"
    refs = [local]
    nodes.docker("volume", "create", volume)
    try:
        host = _run_registry(image, first, volume)
        _tiny_image(local)
        remote = f"{host}/x:1"
        refs.append(remote)
        nodes.docker("tag", local, remote)
        pushed = PUSHED_DIGEST.search(nodes.docker("push", remote))
        assert pushed, f"docker push {remote} reported no digest"
        assert _manifest_digest(host, "x", "1") == pushed.group(1)

        nodes.docker("rm", "-f", first)
        host = _run_registry(image, second, volume)
        assert _manifest_digest(host, "x", "1") == pushed.group(1)
    finally:
        nodes.docker("rm", "-f", first, second, check=False)
        nodes.docker("volume", "rm", volume, check=False)
        nodes.docker("rmi", *refs, check=False)
