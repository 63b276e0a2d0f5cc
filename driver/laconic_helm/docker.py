"""The one way the driver reaches Docker: its CLI ($LACONIC_HELM_DOCKER, else `docker` on PATH)
and the labels kind puts on its node containers, so cluster management and image loading always
talk to the same daemon and find the same nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from laconic_helm import proc
from laconic_helm.tools import tool_path

if TYPE_CHECKING:
    import asyncio

CLUSTER_LABEL = "io.x-k8s.kind.cluster"  # kind's own labels on its node containers
ROLE_LABEL = "io.x-k8s.kind.role"


def argv(*args: str) -> list[str]:
    """Returns the command line running `docker args...` with the configured client."""
    return [tool_path("docker"), *args]


async def run(*args: str, input: bytes | None = None, check: bool = True) -> proc.Completed:
    """Runs `docker args...` to completion (a CommandError on failure when `check`)."""
    return await proc.run(argv(*args), input=input, check=check)


async def spawn(
    *args: str, stdin: int | None = proc.DEVNULL, stdout: int | None = proc.PIPE,
    stderr: int | None = proc.PIPE,
) -> asyncio.subprocess.Process:  # fmt: skip
    """Starts `docker args...` with the given streams, for piping image archives."""
    return await proc.spawn(argv(*args), stdin=stdin, stdout=stdout, stderr=stderr)


async def node_containers(cluster: str | None, fmt: str) -> list[str]:
    """Returns one `fmt` line per kind node container of `cluster` (of any cluster when None),
    running or not: kind knows its nodes by this label alone."""
    label = CLUSTER_LABEL if cluster is None else f"{CLUSTER_LABEL}={cluster}"
    done = await run("ps", "-a", "--no-trunc", "--filter", f"label={label}", "--format", fmt)
    return [line for line in done.text.splitlines() if line.strip()]


def label_format(label: str) -> str:
    """Returns the `--format` template printing a container's `label`."""
    return f'{{{{.Label "{label}"}}}}'
