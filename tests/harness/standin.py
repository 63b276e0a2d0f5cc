"""What the harness reads from a kind stand-in cluster's nodes: the API's endpoint and
credentials (the stand-in left them in the control-plane node, where kubeadm keeps them), its
audit log, and which images each node's containerd holds; and the kubelet stand-ins that play
the clusters' kubelets."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

from tests.harness import controlplane, nodes
from tests.harness.api import KubeAPI
from tests.harness.audit import AuditLog
from tests.harness.client import Client, Credentials
from tests.harness.kubelet import Kubelet, normalize_image


def control_planes(cluster: str) -> list[str]:
    out = nodes.docker(
        "ps",
        "-a",
        "--filter",
        f"label={nodes.CLUSTER_LABEL}={cluster}",
        "--filter",
        f"label={nodes.ROLE_LABEL}=control-plane",
        "--format",
        "{{.Names}}",
    )
    return sorted(out.split())


def read_node_file(node: str, path: Path | str, offset: int = 0) -> bytes:
    """A file's bytes from `offset` on; the node image has busybox but no applet links."""
    done = subprocess.run(
        ["docker", "exec", node, "busybox", "tail", "-c", f"+{offset + 1}", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot read {path} in node {node}: {done.stderr.decode().strip()}")
    return done.stdout


def api_endpoint(node: str) -> str:
    """The host address the node's API port is published on, as https://host:port."""
    published = nodes.docker("port", node, f"{controlplane.NODE_API_PORT}/tcp").split()[0]
    return f"https://{published}"


def credentials(node: str, who: str) -> Credentials:
    """`who` is admin or harness; their certificates were placed in the node at creation."""
    pki = controlplane.NODE_LAYOUT.pki
    return Credentials(
        server=api_endpoint(node),
        ca_pem=read_node_file(node, pki / "ca.crt"),
        cert_pem=read_node_file(node, pki / f"{who}.crt"),
        key_pem=read_node_file(node, pki / f"{who}.key"),
    )


def node_images(node: str) -> set[str]:
    out = nodes.docker("exec", node, "ctr", "-n", "k8s.io", "images", "list", "-q")
    return {normalize_image(ref) for ref in out.split()}


def has_image(node: str, image: str) -> bool:
    return normalize_image(image) in node_images(node)


def cluster_api(cluster: str, kubeconfig: Path) -> KubeAPI:
    """The API of stand-in cluster `cluster`; `kubeconfig` holds its kind-<name> context."""
    planes = control_planes(cluster)
    if not planes:
        raise RuntimeError(f"no control-plane node for stand-in cluster {cluster}")
    plane = planes[0]
    harness = Client(credentials(plane, "harness"))
    log = controlplane.NODE_LAYOUT.audit_log
    return KubeAPI(
        kubeconfig=kubeconfig,
        context=f"kind-{cluster}",
        server=api_endpoint(plane),
        admin=Client(credentials(plane, "admin")),
        harness=harness,
        audit=AuditLog(harness, lambda offset: read_node_file(plane, log, offset)),
        has_image=has_image,
    )


def start_kubelet(cluster: str) -> Kubelet | None:
    """A running kubelet stand-in for `cluster`, or None while its API is still being made."""
    try:
        client = Client(credentials(control_planes(cluster)[0], "harness"))
    except (IndexError, RuntimeError):
        return None
    if not client.ready():
        return None
    kubelet = Kubelet(client, has_image)
    kubelet.start()
    return kubelet


@contextlib.contextmanager
def kubelets_while(
    poll: Callable[[], None], running: MutableMapping[str, Kubelet], name: str
) -> Iterator[None]:
    """Calls `poll` (which starts kubelets into `running`) twice a second in a thread while
    the block runs; then stops every kubelet in `running`."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            poll()
            stop.wait(0.5)

    watcher = threading.Thread(target=loop, name=name, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=30)
        for one in running.values():
            one.stop()
