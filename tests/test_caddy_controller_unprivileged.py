"""The real Caddy ingress controller (v0.2.1, the binary scripts/provision-kind builds from its
source) run the way the caddy-ingress chart's pod runs it, without a kubelet: as the chart's
uid/gid with no capability and no privilege escalation, in a network namespace of its own with
the chart's sysctls, on a read-only root with writable folders only where the chart mounts
emptyDirs, and with the ServiceAccount token of an installed release, so it gets exactly the
chart's RBAC. Proves what the manifests alone cannot: the controller binds :80 and :443 without
NET_BIND_SERVICE, writes nothing outside the emptyDirs, and reads what it needs (its ConfigMap,
an Ingress's TLS Secret in another namespace, its certificate store) with the chart's RBAC.

Needs root (namespaces, mounts, chroot) and the controller binary; the kubelet stand-in runs no
container, so this is the only place short of real kind where the controller itself runs.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.charts_support import CHARTS, Scenario, pods_admitted, render, uninstall
from tests.conftest import CACHE, IN_CI

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI

CHART = "caddy-ingress"
RELEASE = "unpriv"
SCENARIO = Scenario(CHART, ())
# No host ports; and an image no node has, so that on real kind the release's pod exists (the
# controller reads its own pod) but no second controller runs beside the one under test (both
# would contend for the same certificate lock).
SETS = ("kind.enabled=false", "image.repository=laconic-helm.test/not-loaded", "image.tag=v0")
SA_DIR = "var/run/secrets/kubernetes.io/serviceaccount"
API_PORT_INSIDE = 16443

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="namespaces, mounts and chroot are root's"
)

# Carries the API server's TCP port into the controller's empty network namespace through a
# unix socket (`out SOCK HOST PORT` outside, `in PORT SOCK` inside).
RELAY = """
import asyncio, sys

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()

async def main():
    if sys.argv[1] == "out":
        sock, host, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
        dial = lambda: asyncio.open_connection(host, port)
        listen = lambda h: asyncio.start_unix_server(h, sock)
    else:
        port, sock = int(sys.argv[2]), sys.argv[3]
        dial = lambda: asyncio.open_unix_connection(sock)
        listen = lambda h: asyncio.start_server(h, "127.0.0.1", port)
    async def handle(r, w):
        r2, w2 = await dial()
        await asyncio.gather(pipe(r, w2), pipe(r2, w), return_exceptions=True)
    async with await listen(handle) as server:
        await server.serve_forever()

asyncio.run(main())
"""


def controller_binary() -> Path:
    version = yaml.safe_load((CHARTS / CHART / "Chart.yaml").read_text())["appVersion"]
    path = CACHE / "tools" / f"caddy-ingress-{version.lstrip('v')}" / "ingress-controller"
    if not path.exists():
        reason = f"{path} missing: run scripts/provision-kind caddy_ingress"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@dataclass
class PodShape:
    """What the chart's rendered pod asks of the runtime, read from `helm template`."""

    uid: int
    gid: int
    sysctls: dict[str, str]
    args: list[str]
    env: dict[str, str]
    writable: list[str]  # mount paths of the controller's emptyDirs
    read_only_root: bool
    service_account: str


def pod_shape(helm: str, namespace: str) -> PodShape:
    docs = render(helm, SCENARIO, *SETS, release=RELEASE, namespace=namespace)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    controller = pod["containers"][0]
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    context = {**pod["securityContext"], **controller["securityContext"]}
    return PodShape(
        uid=context["runAsUser"],
        gid=context["runAsGroup"],
        sysctls={s["name"]: s["value"] for s in pod["securityContext"].get("sysctls", [])},
        args=controller["args"],
        env={e["name"]: e["value"] for e in controller["env"] if "value" in e},
        writable=[m["mountPath"] for m in controller["volumeMounts"] if m["name"] in empty],
        read_only_root=context.get("readOnlyRootFilesystem", False),
        service_account=pod["serviceAccountName"],
    )


def kubeconfig_ca(api: KubeAPI) -> bytes:
    config = yaml.safe_load(Path(api.kubeconfig).read_text())
    return base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class Running:
    """The controller process and what it left behind."""

    proc: subprocess.Popen[bytes]
    log: Path
    folders: dict[str, Path]  # mount path -> host folder behind it

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pid(self) -> int:
        """The controller's own pid (the session leader is the unshare'd shell)."""
        children = subprocess.run(
            ["pgrep", "-s", str(self.proc.pid), "-f", "^/ingress-controller"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return int(children[0]) if children else 0

    def status(self) -> dict[str, str]:
        lines = Path(f"/proc/{self.pid()}/status").read_text().splitlines()
        return dict(line.split(":\t", 1) for line in lines if ":\t" in line)

    def listening(self) -> set[int]:
        """TCP ports listening in the controller's network namespace."""
        ports = set()
        for table in ("tcp", "tcp6"):
            for row in Path(f"/proc/{self.pid()}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def get(self, path: str) -> tuple[int, str]:
        """GET http://127.0.0.1:9765<path> from inside the controller's network namespace."""
        script = (
            "import urllib.request,sys\n"
            "try:\n"
            f" r=urllib.request.urlopen('http://127.0.0.1:9765{path}',timeout=3)\n"
            " print(r.status);sys.stdout.write(r.read().decode())\n"
            "except Exception as e:\n"
            " print(0);print(e)\n"
        )
        out = subprocess.run(
            ["nsenter", f"--net=/proc/{self.pid()}/ns/net", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout
        code, _, body = out.partition("\n")
        return int(code or 0), body


@contextlib.contextmanager
def run_controller(
    api: KubeAPI, shape: PodShape, namespace: str, pod: str, work: Path, sysctls: dict[str, str]
) -> Iterator[Running]:
    """Runs the controller in fresh network and mount namespaces, as the chart's pod would."""
    work.mkdir(parents=True)
    root = work / "root"
    (root / SA_DIR).mkdir(parents=True)
    shutil.copy(controller_binary(), root / "ingress-controller")
    (root / "etc/ssl/certs").mkdir(parents=True)
    # The kubelet gives every container an /etc/hosts; Caddy's admin endpoint needs localhost.
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    token = api.harness.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{shape.service_account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )["status"]["token"]
    (root / SA_DIR / "token").write_text(token)
    (root / SA_DIR / "ca.crt").write_bytes(kubeconfig_ca(api))
    (root / SA_DIR / "namespace").write_text(namespace)
    folders = {}
    for path in shape.writable:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        folder = work / "emptydir" / path.strip("/").replace("/", "_")
        folder.mkdir(parents=True)
        # An emptyDir with the pod's fsGroup: writable by the pod's group.
        os.chown(folder, 0, shape.gid)
        folder.chmod(0o2775)
        folders[path] = folder
    socket = work / "api.sock"
    server = urllib.parse.urlsplit(api.server)
    relay_out = subprocess.Popen(
        [sys.executable, "-c", RELAY, "out", str(socket), server.hostname, str(server.port)],
        start_new_session=True,
    )
    wait_for("the relay's socket", socket.exists, 10)
    mounts = "\n".join(f"mount --bind {folders[p]} {root}{p}" for p in shape.writable)
    setting = "\n".join(f"sysctl -qw {k}={v}" for k, v in sysctls.items())
    env = {
        **shape.env,
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(API_PORT_INSIDE),
        "POD_NAME": pod,
        "POD_NAMESPACE": namespace,
    }
    script = f"""set -eu
ip link set lo up
{setting}
mount --bind {root} {root}
{"mount -o remount,bind,ro " + str(root) if shape.read_only_root else ""}
{mounts}
{sys.executable} -c '{RELAY}' in {API_PORT_INSIDE} {socket} &
sleep 1
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,+sys_chroot,+setuid,+setgid \\
  env -i {" ".join(f"{k}={v}" for k, v in env.items())} \\
  {shutil.which("chroot")} --userspec={shape.uid}:{shape.gid} --groups={shape.gid} {root} \\
  /ingress-controller {" ".join(shape.args)}
"""
    log = work / "controller.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Running(proc, log, folders)
    finally:
        for started in (proc, relay_out):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            started.wait(timeout=30)


@pytest.fixture
def release(kube_api: KubeAPI, namespace: str) -> Iterator[tuple[PodShape, str]]:
    """The chart installed without host ports; yields its pod shape and its pod's name."""
    helm = shutil.which("helm")
    assert helm is not None
    done = subprocess.run(
        [helm, "upgrade", "--install", RELEASE, str(CHARTS / CHART), "--namespace", namespace,
         *(a for s in SETS for a in ("--set", s))],
        env=kube_api.env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        assert pods_admitted(kube_api, namespace) == []
        pods = kube_api.harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        yield pod_shape(helm, namespace), pods[0]["metadata"]["name"]
    finally:
        uninstall(helm, kube_api, namespace, release=RELEASE)


@pytest.fixture
def routed(kube_api: KubeAPI, release: tuple[PodShape, str]) -> Iterator[str]:
    """Another namespace with an Ingress of the release's class that names a TLS Secret there.
    (No host that needs an ACME certificate: offline, Caddy's retries race its own certificate
    cache's start-up now and then, an upstream race unrelated to how the pod runs.)"""
    shape, _ = release
    ns = kube_api.create_namespace("web")
    class_name = next(a for a in shape.args if a.startswith("-class-name=")).split("=", 1)[1]
    kube_api.harness.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "site-tls"},
         "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}},
    )  # fmt: skip
    for host, tls in (("site", [{"hosts": ["site.example"], "secretName": "site-tls"}]),):
        rule = {"host": f"{host}.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}}  # fmt: skip
        kube_api.harness.create(
            f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": host},
             "spec": {"ingressClassName": class_name, "rules": [rule], "tls": tls}},
        )  # fmt: skip
    try:
        yield ns
    finally:
        kube_api.delete_namespace(ns)


def test_controller_serves_as_the_charts_unprivileged_user(
    kube_api: KubeAPI,
    namespace: str,
    release: tuple[PodShape, str],
    routed: str,
    tmp_path: Path,
) -> None:
    shape, pod = release
    assert shape.uid != 0 and shape.read_only_root
    with run_controller(kube_api, shape, namespace, pod, tmp_path / "run", shape.sysctls) as ctl:
        wait_for("/healthz", lambda: ctl.pid() and ctl.get("/healthz")[0] == 200)
        status = ctl.status()
        assert status["Uid"].split()[:2] == [str(shape.uid)] * 2
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert {80, 443, 9765} <= ctl.listening()
        # The ConfigMap is found (by its bare name), so metrics are served.
        code, metrics = ctl.get("/metrics")
        assert code == 200 and re.search(r"^go_goroutines ", metrics, re.M), metrics[:300]
        # The TLS Secret of an Ingress in another namespace is read and copied to the emptyDir.
        certs = ctl.folders["/etc/caddy/certs"]
        wait_for("the copied TLS Secret", lambda: (certs / "site-tls.pem").exists())
        text = ctl.text()
        for refused in ("forbidden", "read-only file system", "permission denied"):
            assert refused not in text.lower(), text[-3000:]
        assert (ctl.folders[shape.env["XDG_CONFIG_HOME"]] / "caddy" / "autosave.json").exists()


def test_without_the_sysctl_the_controller_cannot_bind_its_ports(
    kube_api: KubeAPI, namespace: str, release: tuple[PodShape, str], routed: str, tmp_path: Path
) -> None:
    # The control: the same run minus the chart's sysctl is what NET_BIND_SERVICE-less non-root
    # gets by default, and Caddy refuses to start its servers.
    shape, pod = release
    assert "net.ipv4.ip_unprivileged_port_start" in shape.sysctls
    with run_controller(kube_api, shape, namespace, pod, tmp_path / "run", {}) as ctl:
        wait_for(
            "the bind failure", lambda: "listen tcp :80: bind: permission denied" in ctl.text()
        )
        assert not {80, 443} & ctl.listening()
