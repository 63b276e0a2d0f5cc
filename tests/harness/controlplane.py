"""A real Kubernetes control plane without a kubelet, the way envtest runs one.

etcd, kube-apiserver and kube-controller-manager, built from their own modules by
scripts/provision-tools, run either as host processes for a test session (`HostControlPlane`)
or inside a kind-like control-plane node for the kind stand-in (`node_init_script`). Both use
the same command lines, so the two behave alike: real discovery, OpenAPI, validation,
admission, server-side apply, RBAC and controllers (Deployments get ReplicaSets, namespaces
are finalized, PVCs bind to PVs). Nothing runs containers; see tests/harness/kubelet.py.
"""

from __future__ import annotations

import ctypes
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import pki
from tests.harness.client import Client, Credentials
from tests.harness.loopback import free_port
from tests.harness.waits import CEILING, wait_until

TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"

# Writes are logged with their metadata; reads, and writes by the control plane's own
# components, are not. The harness's GET /version is logged so that a reader can tell when every
# earlier event has reached the file (see audit.py).
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["{pki.HARNESS_USER}"]
    nonResourceURLs: ["/version"]
  - level: None
    users:
      - "{pki.HARNESS_USER}"
      - "{pki.CONTROLLER_MANAGER_USER}"
      - system:kube-scheduler
      - system:apiserver
  - level: None
    userGroups: ["system:serviceaccounts", "system:nodes"]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""

# Without a kubelet posting heartbeats, the node lifecycle controller would mark every node
# NotReady after its grace period and evict the pods; the kubelet stand-in reports nodes Ready
# once instead.
_CONTROLLERS = "*,-node-lifecycle-controller"


def find_tools() -> dict[str, str]:
    """Paths of the control plane binaries on PATH; raises naming the missing ones."""
    found = {name: shutil.which(name) for name in TOOLS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise RuntimeError(
            f"stand-in API binaries not found on PATH: {', '.join(missing)} "
            "(run scripts/provision-tools)"
        )
    return {name: str(Path(path).resolve()) for name, path in found.items() if path}


def etcd_skips_fsync(etcd: str) -> bool:
    """Whether this etcd has --unsafe-no-fsync (3.5+): test data need not survive a crash."""
    out = subprocess.run([etcd, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"etcd Version: (\d+)\.(\d+)", out)
    return bool(found) and (int(found[1]), int(found[2])) >= (3, 5)


@dataclass(frozen=True)
class Layout:
    """Where one control plane's files are, as seen by its processes."""

    pki: Path
    etcd_data: Path
    audit_log: Path
    audit_policy: Path
    controller_manager_kubeconfig: Path


def etcd_argv(
    etcd: str, layout: Layout, client_port: int, peer_port: int, no_fsync: bool
) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    argv = [
        etcd,
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--log-level=warn",
    ]
    return [*argv, "--unsafe-no-fsync"] if no_fsync else argv


def apiserver_argv(
    binary: str, layout: Layout, etcd_port: int, port: int, bind_address: str
) -> list[str]:
    p = layout.pki
    return [
        binary,
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={bind_address}",
        f"--secure-port={port}",
        # The lease reconciler refuses a loopback address; nothing here routes to it anyway.
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--profiling=false",
        "--v=0",
    ]


def controller_manager_argv(binary: str, layout: Layout) -> list[str]:
    p = layout.pki
    kubeconfig = layout.controller_manager_kubeconfig
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={p / 'sa.key'}",
        f"--root-ca-file={p / 'ca.crt'}",
        f"--cluster-cidr={POD_CIDR}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--controllers={_CONTROLLERS}",
        "--profiling=false",
        "--v=0",
    ]


def write_files(layout: Layout, root: Path, server_names: Sequence[str], api_port: int) -> None:
    """Writes PKI, audit policy and the controller manager's kubeconfig under `root`.

    `layout` names the paths the processes will see; `root` is where they are on this side
    (the same directory on the host, a staging directory copied into a node otherwise).
    """

    def here(path: Path) -> Path:
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    files = pki.write_pki(here(layout.pki / "ca.crt").parent, *server_names)
    ca = pki.load_authority(files["ca.crt"].read_bytes(), files["ca.key"].read_bytes())
    here(layout.audit_policy).write_text(AUDIT_POLICY)
    kcm = ca.issue(pki.CONTROLLER_MANAGER_USER)
    here(layout.controller_manager_kubeconfig).write_text(
        pki.kubeconfig("kube-controller-manager", f"https://127.0.0.1:{api_port}", ca.pem, kcm)
    )
    for name, (user, group) in {
        "admin": (pki.ADMIN_USER, "system:masters"),
        "harness": (pki.HARNESS_USER, "system:masters"),
    }.items():
        pair = ca.issue(user, organization=group)
        here(layout.pki / f"{name}.crt").write_bytes(pair.cert)
        here(layout.pki / f"{name}.key").write_bytes(pair.key)
        here(layout.pki / f"{name}.key").chmod(0o600)


def credentials(pki_dir: Path, server: str, who: str) -> Credentials:
    """Credentials of `who` (admin or harness) from a PKI directory written by write_files."""
    return Credentials(
        server=server,
        ca_pem=(pki_dir / "ca.crt").read_bytes(),
        cert_pem=(pki_dir / f"{who}.crt").read_bytes(),
        key_pem=(pki_dir / f"{who}.key").read_bytes(),
    )


def admin_kubeconfig(pki_dir: Path, server: str, name: str) -> str:
    cred = credentials(pki_dir, server, "admin")
    return pki.kubeconfig(name, server, cred.ca_pem, pki.KeyPair(cred.cert_pem, cred.key_pem))


def wait_until_serving(harness: Client, ceiling: float, why: Callable[[], str]) -> None:
    """Waits for /readyz, then for the controllers to have made the cluster usable.

    Pods need their namespace's `default` ServiceAccount (the ServiceAccount admission plugin
    refuses them otherwise); its existence shows the controller manager is at work. Each wait
    has the whole `ceiling`: on a loaded machine either may take most of it.
    """
    wait_until(harness.ready, "kube-apiserver to become ready", ceiling, 0.1, why)
    wait_until(
        lambda: harness.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
        "kube-controller-manager to create ServiceAccounts",
        ceiling,
        0.1,
        why,
    )


def _die_with_parent() -> None:
    """Runs in the child before exec: a killed test session takes its control plane along."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class HostControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as host processes on loopback ports."""

    def __init__(self, workdir: Path, tools: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.tools = tools or find_tools()
        # etcd's data on tmpfs: its fsyncs then cost nothing, whatever the etcd version.
        shm = Path("/dev/shm")
        self._etcd_dir = Path(
            tempfile.mkdtemp(prefix="laconic-helm-etcd-", dir=shm if shm.is_dir() else None)
        )
        self.layout = Layout(
            pki=workdir / "pki",
            etcd_data=self._etcd_dir / "data",
            audit_log=workdir / "audit.log",
            audit_policy=workdir / "audit-policy.yaml",
            controller_manager_kubeconfig=workdir / "controller-manager.conf",
        )
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        with log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._procs.append((name, proc))

    def _why(self) -> str:
        dead = [f"{name} exited {p.returncode}" for name, p in self._procs if p.poll() is not None]
        return f"{'; '.join(dead) or 'all running'}; logs in {self.workdir}"

    def start(self, ceiling: float = CEILING) -> None:
        """Starts the three processes and waits (polling, up to `ceiling` s) until serving."""
        write_files(self.layout, Path("/"), (), self.port)
        etcd_port, peer_port = free_port(), free_port()
        no_fsync = etcd_skips_fsync(self.tools["etcd"])
        self._spawn(
            "etcd", etcd_argv(self.tools["etcd"], self.layout, etcd_port, peer_port, no_fsync)
        )
        self._spawn(
            "kube-apiserver",
            apiserver_argv(
                self.tools["kube-apiserver"], self.layout, etcd_port, self.port, "127.0.0.1"
            ),
        )
        self._spawn(
            "kube-controller-manager",
            controller_manager_argv(self.tools["kube-controller-manager"], self.layout),
        )
        harness = Client(credentials(self.layout.pki, self.server, "harness"))
        try:
            wait_until_serving(harness, ceiling, self._why)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops every process; the data is thrown away, so a slow graceful drain is cut short."""
        for _, proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for _, proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self._etcd_dir, ignore_errors=True)


# Inside a node, the control plane lives under kubeadm's usual paths.
NODE_LAYOUT = Layout(
    pki=Path("/etc/kubernetes/pki"),
    etcd_data=Path("/var/lib/etcd"),
    audit_log=Path("/var/log/kubernetes/audit.log"),
    audit_policy=Path("/etc/kubernetes/audit-policy.yaml"),
    controller_manager_kubeconfig=Path("/etc/kubernetes/controller-manager.conf"),
)
NODE_API_PORT = 6443
NODE_BIN = Path("/kind/bin")
NODE_INIT = Path("/kind/init")


def node_init_script(no_fsync: bool) -> str:
    """PID 1 of a control-plane node: containerd plus the control plane, each restarted if it
    exits, so a restarted node container serves its API again as a kind node does."""
    layout = NODE_LAYOUT
    etcd_port, peer_port = 2379, 2380
    commands = {
        "etcd": etcd_argv(str(NODE_BIN / "etcd"), layout, etcd_port, peer_port, no_fsync),
        "kube-apiserver": apiserver_argv(
            str(NODE_BIN / "kube-apiserver"), layout, etcd_port, NODE_API_PORT, "0.0.0.0"
        ),
        "kube-controller-manager": controller_manager_argv(
            str(NODE_BIN / "kube-controller-manager"), layout
        ),
    }
    # The node image has busybox but no applet links: applets are called through it.
    lines = [
        "#!/bin/sh",
        "trap 'exit 0' TERM INT",
        f"busybox mkdir -p {layout.audit_log.parent} {layout.etcd_data}",
        'keep() { name=$1; shift; while :; do "$@" >>/var/log/kubernetes/$name.log 2>&1;'
        " busybox sleep 1; done; }",
        "keep containerd /usr/bin/containerd &",
    ]
    lines += [f"keep {name} {shlex.join(argv)} &" for name, argv in commands.items()]
    lines.append("wait")
    return "\n".join(lines) + "\n"
