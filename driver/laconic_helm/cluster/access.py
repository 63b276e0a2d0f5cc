"""How the rest of the deploy reaches the cluster's API: the kubeconfig and context to use.

For kind that is the driver's own copy of the cluster's kubeconfig, trusted for a re-run only
while it still points at the port the node publishes the API on.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from laconic_helm import paths, proc
from laconic_helm.cluster.record import cluster_dir
from laconic_helm.errors import ClusterError
from laconic_helm.tools import tool_path

if TYPE_CHECKING:
    from pathlib import Path

    from laconic_helm.cluster.nodes import PortBinding
    from laconic_helm.cluster.observe import ClusterState
    from laconic_helm.spec import Cluster


def kubeconfig_path(name: str) -> Path:
    """Returns where the driver keeps kind cluster `name`'s kubeconfig (context kind-<name>)."""
    return cluster_dir(name) / "kubeconfig"


@dataclass(frozen=True)
class ClusterAccess:
    """How the rest of the deploy reaches the cluster's API."""

    kubeconfig: Path | None  # None: the default kubeconfig ($KUBECONFIG or ~/.kube/config)
    context: str


def access_of(cluster: Cluster) -> ClusterAccess:
    """Where the releases reach the cluster: for kind, the driver's own kubeconfig copy (which
    `ensure_kubeconfig` keeps current), so helm can be set up before the cluster exists."""
    if cluster.provider == "existing":
        return ClusterAccess(None, cluster.kube_context)
    return ClusterAccess(kubeconfig_path(cluster.name), f"kind-{cluster.name}")


async def ensure_kubeconfig(cluster: Cluster, state: ClusterState) -> ClusterAccess:
    """Returns how to reach the API; for kind, refreshes the driver's own kubeconfig (0600).

    The driver's copy comes from `kind get kubeconfig`, so neither $KUBECONFIG nor a stale
    ~/.kube/config can point the releases at another cluster.
    """
    access = access_of(cluster)
    if access.kubeconfig is None:
        return access
    text = state.kubeconfig
    if text is None:
        text, error = await kind_kubeconfig(cluster.name)
        if text is None:
            raise ClusterError(f"cluster {cluster.name}: `kind get kubeconfig` fails: {error}")
    with contextlib.suppress(OSError):
        if access.kubeconfig.read_text() == text:
            return access
    paths.write_private(access.kubeconfig, text.encode())
    return access


async def kind_kubeconfig(name: str) -> tuple[str | None, str | None]:
    """Returns (the kubeconfig kind gives for cluster `name`, None), or (None, why it failed)."""
    done = await proc.run([tool_path("kind"), "get", "kubeconfig", "--name", name], check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return None, tail[-1] if tail else f"exit code {done.returncode}"
    return done.text, None


def kubeconfig_server(text: str, context: str) -> str | None:
    """Returns the API server URL that `context` uses in a kubeconfig document, if any."""
    try:
        doc = yaml.safe_load(text) or {}
        ctx = next(c["context"] for c in doc.get("contexts") or () if c["name"] == context)
        cluster = next(
            c["cluster"] for c in doc.get("clusters") or () if c["name"] == ctx["cluster"]
        )
        return str(cluster["server"])
    except (yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        return None


def server_port(url: str) -> int | None:
    """Returns the port an API server URL names (the scheme's default if none), or None."""
    match = re.match(r"^\w+://(?:\[[^\]]*\]|[^:/]*)(?::(\d+))?", url)
    if not match:
        return None
    if match[1]:
        return int(match[1])
    return 443 if url.startswith("https") else 80


def cached_kubeconfig(name: str, api: PortBinding | None) -> str | None:
    """The driver's copy of the cluster's kubeconfig, if it still points at its API port."""
    try:
        text = kubeconfig_path(name).read_text()
    except OSError:
        return None
    server = kubeconfig_server(text, f"kind-{name}")
    if api is None or server is None or server_port(server) != api.host_port:
        return None
    return text
