"""Kind-like node containers made of real parts: Debian's containerd and ctr in a container
labelled and named exactly as kind labels and names its nodes.

Only what image loading and cluster inspection touch is real here: the containerd content store,
`ctr images import`, the docker labels, names, port bindings and mounts. There is no kubelet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from laconic_helm import handoff
from tests.harness import waits

CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
NODE_IMAGE_REPO = "laconic-helm-test/node"
HARNESS_LABEL = "dev.laconic-helm.test-harness"  # lets a sweep find leftovers of killed runs
# The label's value is the pid of the test session that owns the node (inherited by the kind
# stand-in through this variable), so a sweep removes only nodes whose session is gone.
OWNER_ENV = "LACONIC_HELM_TEST_OWNER"

_NODE_PROGRAMS = ("/usr/bin/containerd", "/usr/bin/ctr", "/bin/busybox")


def docker(*args: str, input: bytes | None = None, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], input=input, capture_output=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def shared_libraries(program: str) -> list[str]:
    """The libraries `program` loads, to copy into the node image; none for a static binary
    (Debian's busybox-static), which `ldd` refuses with exit 1 and "not a dynamic executable"."""
    done = subprocess.run(["ldd", program], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "not a dynamic executable" in done.stdout + done.stderr:
            return []
        raise RuntimeError(f"ldd {program}: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            libs.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _rootfs_tar(files: Iterable[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("tmp", "run", "etc", "var/lib/containerd", "bin", "usr/bin", "sbin"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path in sorted(set(files)):
            tar.add(str(Path(path).resolve()), arcname=path.lstrip("/"))
        link = tarfile.TarInfo("bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "/bin/busybox"
        tar.addfile(link)
    return buf.getvalue()


def ensure_node_image() -> str:
    """Builds the node image once per set of host binaries (offline, with `docker import`)."""
    missing = [p for p in _NODE_PROGRAMS if not Path(p).exists()]
    if missing:
        raise RuntimeError(
            f"node image needs {', '.join(missing)} (apt-get install containerd busybox)"
        )
    files = [lib for prog in _NODE_PROGRAMS for lib in (prog, *shared_libraries(prog))]
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(path.encode())
        digest.update(Path(path).resolve().read_bytes())
    tag = f"{NODE_IMAGE_REPO}:{digest.hexdigest()[:16]}"
    if docker("images", "-q", tag).strip():
        return tag
    docker(
        "import",
        "--change",
        'CMD ["/usr/bin/containerd"]',
        "--change",
        "ENV PATH=/usr/bin:/bin:/sbin",
        "-",
        tag,
        input=_rootfs_tar(files),
    )
    return tag


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    protocol: str = "TCP"
    listen_address: str = "127.0.0.1"


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = False
    propagation: str = ""  # docker's rslave/rshared, as kind maps HostToContainer/Bidirectional


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: str  # control-plane | worker
    ports: Sequence[PortMapping] = ()
    mounts: Sequence[Mount] = ()
    labels: dict[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)  # placed in the node before it starts
    command: Sequence[str] = ()  # replaces the image's CMD (containerd) when given
    network: str = ""  # a docker network to join instead of the default bridge


# What kind's config gives registry mode: containerd reads per-registry host config from here.
REGISTRY_HOSTS_CONFIG = (
    b'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
    b'  config_path = "/etc/containerd/certs.d"\n'
)


def registry_node_specs(
    cluster: str, network: str, workers: int = 0, transfer: Path | None = None
) -> list[NodeSpec]:
    """Nodes as kind makes them for registry mode: on a user-defined network (so a registry
    container is found by name), their containerd reading /etc/containerd/certs.d; with
    `transfer`, mounting it as `transfer_node_specs` does."""
    files = {"/etc/containerd/config.toml": REGISTRY_HOSTS_CONFIG}
    return [
        dataclasses.replace(spec, network=network, files=files)
        for spec in (
            transfer_node_specs(cluster, transfer, workers)
            if transfer
            else node_specs(cluster, workers)
        )
    ]


def transfer_node_specs(cluster: str, folder: Path, workers: int = 0) -> list[NodeSpec]:
    """Nodes as the driver's kind config makes them: each mounts `folder` read-only where image
    streams are handed over (laconic_helm.handoff)."""
    mount = Mount(str(folder), handoff.IN_NODE, read_only=True)
    return [dataclasses.replace(spec, mounts=(mount,)) for spec in node_specs(cluster, workers)]


def node_specs(cluster: str, workers: int = 0) -> list[NodeSpec]:
    """Names nodes as kind does: <cluster>-control-plane, <cluster>-worker, -worker2, ..."""
    specs = [NodeSpec(f"{cluster}-control-plane", "control-plane")]
    specs += [
        NodeSpec(f"{cluster}-worker{'' if i == 1 else i}", "worker") for i in range(1, workers + 1)
    ]
    return specs


def start_node(cluster: str, spec: NodeSpec, image: str | None = None) -> str:
    """Starts one node container with containerd running inside; returns its name."""
    args = [
        "create",
        "--name",
        spec.name,
        "--hostname",
        spec.name,
        "--label",
        f"{CLUSTER_LABEL}={cluster}",
        "--label",
        f"{ROLE_LABEL}={spec.role}",
        "--label",
        f"{HARNESS_LABEL}={os.environ.get(OWNER_ENV) or os.getpid()}",
        # The overlayfs snapshotter cannot sit on the container's own overlay root.
        "-v",
        "/var/lib/containerd",
        "--cap-add",
        "SYS_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
    ]
    if spec.network:
        args += ["--network", spec.network]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    for p in spec.ports:
        proto = "" if p.protocol.upper() == "TCP" else f"/{p.protocol.lower()}"
        args += ["-p", f"{p.listen_address}:{p.host_port}:{p.container_port}{proto}"]
    for m in spec.mounts:
        options = ",".join(o for o in ("ro" if m.read_only else "", m.propagation) if o)
        args += ["-v", f"{m.host_path}:{m.container_path}{':' + options if options else ''}"]
    docker(*args, image or ensure_node_image(), *spec.command)
    if spec.files:
        docker("cp", "-", f"{spec.name}:/", input=_files_tar(spec.files))
    docker("start", spec.name)
    return spec.name


def _files_tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_ready(node: str, ceiling: float = waits.CEILING) -> None:
    """Waits until the node's containerd answers `ctr version` (polling: a loaded host starts
    it late)."""
    last: list[subprocess.CompletedProcess[bytes]] = []

    def answers() -> bool:
        last[:] = [
            subprocess.run(
                ["docker", "exec", node, "ctr", "version"], capture_output=True, check=False
            )
        ]
        return last[0].returncode == 0

    waits.wait_until(
        answers, f"containerd in {node} to answer", ceiling, why=lambda: last[0].stderr.decode()
    )


def create_cluster(cluster: str, specs: Sequence[NodeSpec] | None = None) -> list[str]:
    """Starts every node of `cluster` and waits for their containerd."""
    nodes = [start_node(cluster, spec) for spec in (specs or node_specs(cluster))]
    for node in nodes:
        wait_ready(node)
    return nodes


def list_nodes(cluster: str) -> list[str]:
    label = f"label={CLUSTER_LABEL}={cluster}"
    out = docker("ps", "-a", "--filter", label, "--format", "{{.Names}}")
    return sorted(out.split())


def list_clusters() -> list[str]:
    out = docker("ps", "-a", "--filter", f"label={CLUSTER_LABEL}", "--format", "{{.Labels}}")
    names = set()
    for labels in out.splitlines():
        for pair in labels.split(","):
            key, _, value = pair.partition("=")
            if key == CLUSTER_LABEL:
                names.add(value)
    return sorted(names)


def delete_cluster(cluster: str) -> None:
    """Removes the cluster's node containers and their volumes; absent counts as done."""
    nodes = list_nodes(cluster)
    if nodes:
        docker("rm", "-f", "-v", *nodes)


def ctr_images(node: str) -> list[str]:
    """Image names the node's containerd holds in kind's `k8s.io` namespace."""
    out = docker("exec", node, "ctr", "-n", "k8s.io", "images", "list", "-q")
    return sorted(out.split())


def docker_available() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    )


def mount_propagates(host_path: str) -> bool:
    """Whether the host mount holding `host_path` is shared or a slave: docker refuses
    rslave/rshared bind mounts of anything else (kind on such a host fails the same way)."""
    target = Path(host_path).resolve()
    best, optional = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")[0].split()
        point = fields[4]
        if target.is_relative_to(point) and len(point) >= len(best):
            best, optional = point, " ".join(fields[6:])
    return "shared:" in optional or "master:" in optional


def owner_gone(owner: str) -> bool:
    """Whether the test session whose pid is `owner` has ended."""
    if not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_orphans() -> list[str]:
    """Removes harness nodes whose test session has ended (killed runs); returns their names."""
    out = docker(
        "ps",
        "-a",
        "--filter",
        f"label={HARNESS_LABEL}",
        "--format",
        f'{{{{.Names}}}} {{{{.Label "{HARNESS_LABEL}"}}}}',
    )
    orphans = [
        name
        for name, _, owner in (line.partition(" ") for line in out.splitlines())
        if owner_gone(owner)
    ]
    if orphans:
        docker("rm", "-f", "-v", *orphans)
    return orphans
