"""External tools the driver needs: where to find them and whether they work (`doctor`)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
from dataclasses import dataclass, replace

from laconic_helm import proc
from laconic_helm.errors import CommandError, ToolMissingError

SUPPORTED_HELM_MAJORS = (3, 4)
MIN_HELM3 = (3, 17)  # --take-ownership, used to adopt objects Helm did not create


def tool_path(name: str) -> str:
    """Returns the program to run for `name`; LACONIC_HELM_<NAME> overrides the PATH lookup."""
    return os.environ.get(f"LACONIC_HELM_{name.upper().replace('-', '_')}", name)


@dataclass(frozen=True)
class ToolStatus:
    name: str
    required: bool
    ok: bool
    version: str | None
    detail: str

    def line(self) -> str:
        mark = "✓" if self.ok else ("✗" if self.required else "-")
        version = f" {self.version}" if self.version else ""
        return f"{mark} {self.name}{version}: {self.detail}"


_HOW_TO_INSTALL = {
    "docker": "install Docker Engine (Debian: apt-get install docker.io containerd), start dockerd",
    "kind": "install kind: go install sigs.k8s.io/kind@v0.33.0",
    "helm": "install Helm 4.x or 3.17+ (a single static binary on PATH, or set LACONIC_HELM_HELM)",
    "kubectl": "optional; install kubectl for manual inspection",
}


async def _version(argv: list[str]) -> str:
    return (await proc.run(argv)).text.strip()


async def _check(name: str, required: bool, argv: list[str]) -> ToolStatus:
    try:
        version = await _version(argv)
    except ToolMissingError:
        return ToolStatus(name, required, False, None, f"not found; {_HOW_TO_INSTALL[name]}")
    except CommandError as exc:
        return ToolStatus(name, required, False, None, f"does not work ({exc.message})")
    return ToolStatus(name, required, True, version, "found")


def helm_major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


async def check_helm() -> ToolStatus:
    status = await _check(
        "helm", True, [tool_path("helm"), "version", "--template", "{{.Version}}"]
    )
    if not status.ok or status.version is None:
        return status
    mm = helm_major_minor(status.version)
    if mm is None or mm[0] not in SUPPORTED_HELM_MAJORS or (mm[0] == 3 and mm < MIN_HELM3):
        return ToolStatus("helm", True, False, status.version, _HOW_TO_INSTALL["helm"])
    return ToolStatus("helm", True, True, status.version, f"Helm {mm[0]}")


async def check_docker() -> ToolStatus:
    client = await _check(
        "docker", True, [tool_path("docker"), "version", "--format", "{{.Client.Version}}"]
    )
    if not client.ok:
        # `docker version` exits non-zero when the daemon is down but the client is present.
        try:
            await _version([tool_path("docker"), "--version"])
        except (ToolMissingError, CommandError):
            return client
        return ToolStatus("docker", True, False, None, "client found, daemon not answering")
    server = await proc.run(
        [tool_path("docker"), "info", "--format", "{{.ServerVersion}}"], check=False
    )
    if server.returncode != 0 or not server.text.strip():
        return ToolStatus("docker", True, False, client.version, "daemon not answering")
    return ToolStatus("docker", True, True, client.version, f"daemon {server.text.strip()}")


async def check_kind() -> ToolStatus:
    status = await _check("kind", True, [tool_path("kind"), "version"])
    if status.ok and status.version:
        found = re.search(r"v\d+\.\d+\.\d+", status.version)
        return ToolStatus("kind", True, True, found[0] if found else status.version, "found")
    return status


# An image with one empty folder: the probe's program is missing on purpose, so a container that
# got as far as starting it proves the privileged set-up worked, and nothing of it ever runs.
_PROBE_IMAGE = "laconic-helm.local/privileged-probe:1"
_PROBE_PROGRAM = "/laconic-helm-probe"


def _empty_image_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo("tmp")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o1777
        tar.addfile(folder)
    return buffer.getvalue()


async def check_privileged() -> ToolStatus:
    """kind's nodes are privileged containers; a host whose kernel withholds a capability the
    runtime must grant (CAP_SYS_RESOURCE here) refuses them, and `kind create` then fails."""
    docker = tool_path("docker")
    name = "privileged containers"
    try:
        await proc.run([docker, "import", "-", _PROBE_IMAGE], input=_empty_image_tar())
        done = await proc.run(
            [docker, "run", "--rm", "--privileged", "--network", "none", _PROBE_IMAGE,
             _PROBE_PROGRAM],
            check=False,
        )  # fmt: skip
    except CommandError as exc:
        return ToolStatus(name, True, False, None, f"could not be tried ({exc.message})")
    finally:
        await proc.run([docker, "image", "rm", "--force", _PROBE_IMAGE], check=False)
    said = done.stderr.decode(errors="replace")
    if _PROBE_PROGRAM in said and re.search(r"no such file|not found", said):
        return ToolStatus(name, True, True, None, "allowed (kind can run its nodes)")
    reason = next((line.strip() for line in said.splitlines() if line.strip()), "no message")
    return ToolStatus(
        name, True, False, None,
        f"refused, so kind cannot create a cluster on this Docker: {reason}",
    )  # fmt: skip


async def check_kubectl() -> ToolStatus:
    status = await _check(
        "kubectl", False, [tool_path("kubectl"), "version", "--client", "-o", "json"]
    )
    if status.ok and status.version:
        found = re.search(r'"gitVersion":\s*"([^"]+)"', status.version)
        return ToolStatus("kubectl", False, True, found[1] if found else None, "found")
    return status


def host_statuses() -> list[ToolStatus]:
    """The host settings an agave rpc or validator node needs, and the cgroup version, as
    optional lines: doctor has no spec, so a short setting is information, never a failure."""
    # Here, not at the top: every docker call imports this module for `tool_path`, and host
    # imports the spec models (pydantic), which `images load` would pay at start-up for nothing.
    from laconic_helm import host

    proc_root = host.proc_root()
    settings = [*host.agave_settings(proc_root), host.cgroup_setting(proc_root, None)]
    return [ToolStatus(s.name, False, s.ok is True, s.value, s.detail()) for s in settings]


async def doctor() -> list[ToolStatus]:
    """Checks every tool at once, then the host; the result lists required tools first. Where
    Docker answers, kind is judged by whether the nodes it would make can start, not only by
    its version."""

    async def docker_and_privileged() -> list[ToolStatus]:
        docker = await check_docker()
        return [docker, await check_privileged()] if docker.ok else [docker]

    docker, kind, helm, kubectl = await asyncio.gather(
        docker_and_privileged(), check_kind(), check_helm(), check_kubectl()
    )
    privileged = docker[1] if len(docker) > 1 else None
    if kind.ok and privileged is not None and not privileged.ok:
        kind = replace(kind, ok=False, detail="found, but cannot create a cluster here (below)")
    return [*docker[:1], kind, *docker[1:], helm, kubectl, *host_statuses()]
