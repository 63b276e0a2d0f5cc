"""The harness's pytest fixtures (registered by tests/conftest.py through pytest_plugins).

Each fixture comes in two variants, run by the same test body: the stand-in (marker
`apiserver`, plus `docker` for kind clusters) and the real kind cluster (marker `cluster`), on
the toolchain scripts/provision-kind makes (tests/harness/realkind.py). Both run here and in
CI; where the toolchain is missing the real-kind variant skips with the reason (fails in CI).

- kube_api (session): KubeAPI of one Kubernetes API for the whole session.
- namespace: a fresh namespace in kube_api, deleted after the test.
- kubelet: the kubelet stand-in running for the whole test (a real cluster has its own).
- kind_cli: a `kind` to drive (the stand-in, first on PATH, or the real one), a private
  $KUBECONFIG, and teardown of every cluster the test made, failed or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm.cluster import kindconfig
from tests.harness import controlplane, nodes, realkind, standin
from tests.harness.api import KubeAPI
from tests.harness.audit import AuditLog
from tests.harness.client import Client
from tests.harness.kubelet import Kubelet, NodeInfo, kind_node_labels, register_node

# Nodes made by this session, by the kind stand-in included, carry this pid; a later session
# removes them if this one was killed before its teardown. Each xdist worker is a session of
# its own (it inherits the controller's variable, and must not follow the controller's nodes).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ[nodes.OWNER_ENV] = str(os.getpid())
else:
    os.environ.setdefault(nodes.OWNER_ENV, str(os.getpid()))

STANDIN_BIN = Path(__file__).resolve().parent / "bin"
STANDIN_NODE = "standin-control-plane"
E2E_CLUSTER = f"session-{os.environ[nodes.OWNER_ENV]}-api"

_startup: dict[str, float] = {}


def pytest_sessionstart() -> None:
    """Removes kind-like nodes, and real kind clusters, left by test sessions that were killed
    before their teardown."""
    if nodes.docker_available():
        nodes.remove_orphans()
    if realkind.missing() is None:
        realkind.remove_orphans()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `standin_only("why")` drives what only the stand-in lets a test control
    (a kubelet switched off, images that cannot run); its real-kind variant is deselected
    (pytest counts it as such), and tests/README.md lists each with its reason."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("standin_only")
        params = getattr(item, "callspec", None)
        on_kind = params is not None and "kind" in params.params.values()
        if marker is not None and on_kind:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in _startup.items():
        terminalreporter.write_line(f"{what} ready in {seconds:.1f} s")


@contextlib.contextmanager
def _standin_api(workdir: Path) -> Iterator[KubeAPI]:
    started = time.monotonic()
    plane = controlplane.HostControlPlane(workdir)
    plane.start()
    try:
        context = "laconic-helm-standin"
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            controlplane.admin_kubeconfig(plane.layout.pki, plane.server, context)
        )
        kubeconfig.chmod(0o600)
        harness = Client(controlplane.credentials(plane.layout.pki, plane.server, "harness"))
        # One node labelled as laconic-so's kind control-plane (ingress-ready), untainted as
        # kind leaves a single-node cluster.
        register_node(
            harness,
            NodeInfo(
                name=STANDIN_NODE,
                address="172.18.0.2",
                labels=kind_node_labels(STANDIN_NODE, "control-plane", {"ingress-ready": "true"}),
            ),
        )
        audit_log = plane.layout.audit_log

        def read_from(offset: int) -> bytes:
            with audit_log.open("rb") as f:
                f.seek(offset)
                return f.read()

        api = KubeAPI(
            kubeconfig=kubeconfig,
            context=context,
            server=plane.server,
            admin=Client(controlplane.credentials(plane.layout.pki, plane.server, "admin")),
            harness=harness,
            audit=AuditLog(harness, read_from),
            startup_seconds=time.monotonic() - started,
        )
        _startup["stand-in API (etcd, kube-apiserver, kube-controller-manager)"] = (
            api.startup_seconds
        )
        yield api
    finally:
        plane.stop()


def _real_kind() -> str:
    path = shutil.which("kind", path=os.environ["PATH"].replace(str(STANDIN_BIN), ""))
    if path is None:
        pytest.skip("kind not found")
    return path


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("standin", marks=pytest.mark.apiserver, id="standin"),
        pytest.param("kind", marks=pytest.mark.cluster, id="kind"),
    ],
)
def kube_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeAPI]:
    """One Kubernetes API for the session: the stand-in, or a real kind cluster."""
    workdir = tmp_path_factory.mktemp(f"kube-api-{request.param}")
    if request.param == "standin":
        with _standin_api(workdir) as api:
            yield api
        return
    kind = _real_kind()
    api = realkind.create_session_cluster(kind, E2E_CLUSTER, workdir)
    _startup["kind cluster"] = api.startup_seconds
    try:
        yield api
    finally:
        realkind.delete_cluster(kind, E2E_CLUSTER, api.kubeconfig)


@pytest.fixture
def namespace(kube_api: KubeAPI) -> Iterator[str]:
    """A fresh namespace for one test."""
    name = kube_api.create_namespace()
    try:
        yield name
    finally:
        kube_api.delete_namespace(name)


@pytest.fixture
def kubelet(kube_api: KubeAPI) -> Iterator[Kubelet | None]:
    """Pods in kube_api start and become ready for the whole test."""
    with kube_api.kubelet() as running:
        yield running


# --- kind clusters -----------------------------------------------------------------------------


def _owned_clusters() -> set[str]:
    """Stand-in clusters with a node made by this session."""
    out = nodes.docker(
        "ps",
        "-a",
        "--filter",
        f"label={nodes.HARNESS_LABEL}={os.environ[nodes.OWNER_ENV]}",
        "--format",
        f'{{{{.Label "{nodes.CLUSTER_LABEL}"}}}}',
    )
    return {line for line in out.split() if line}


@dataclass
class KindCLI:
    """A kind command line to test against, with a private $KUBECONFIG."""

    binary: str
    kubeconfig: Path
    standin: bool
    names: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        args, input = self._for_this_host(args, input)
        done = subprocess.run(
            [self.binary, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kind {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
            )
        return done

    def _for_this_host(
        self, args: tuple[str, ...], input: str | None
    ) -> tuple[tuple[str, ...], str | None]:
        """A real `kind create cluster` gets the node image built here and this host's config
        patches (merged into the test's own config), as an operator of this host would add
        them; the kind stand-in needs neither."""
        if self.standin or args[:2] != ("create", "cluster"):
            return args, input
        rest = list(args[2:])
        config: dict[str, Any] = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4"}
        if "--config" in rest:
            at = rest.index("--config")
            source = rest.pop(at + 1)
            rest.pop(at)
            config = yaml.safe_load(input if source == "-" else Path(source).read_text())
        config["kubeadmConfigPatches"] = [
            *config.get("kubeadmConfigPatches", []),
            *(yaml.safe_dump(patch) for patch in realkind.HOST_PATCHES["kubeadm"]),
        ]
        containerd = config.get("containerdConfigPatches", [])
        if kindconfig.REGISTRY_HOSTS_PATCH not in containerd:  # a cluster not made by the driver
            containerd = [kindconfig.REGISTRY_HOSTS_PATCH, *containerd]
        config["containerdConfigPatches"] = [*containerd, *realkind.HOST_PATCHES["containerd"]]
        rest += ["--image", realkind.node_image(), "--config", "-"]
        if "--wait" not in rest:  # a loaded host's API takes a while; tests then use it at once
            rest += ["--wait", "300s"]
        return ("create", "cluster", *rest), yaml.safe_dump(config)

    def cluster_fields(self) -> dict[str, Any]:
        """Fields a spec's `cluster` needs for this kind: none for the stand-in; the node image
        and this host's patches for real kind (the driver adds nothing by itself)."""
        return {} if self.standin else realkind.cluster_fields()

    def start(self, *args: str) -> subprocess.Popen[str]:
        """kind running in the background, for tests that interrupt it."""
        args, input = self._for_this_host(args, None)
        process = subprocess.Popen(
            [self.binary, *args],
            env=self.env,
            stdin=None if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if process.stdin is not None:
            process.stdin.write(input or "")
            process.stdin.close()
        return process

    def new_name(self, prefix: str = "lh") -> str:
        """A cluster name no other test or session uses, holding this session's pid (so a
        later session can tell a killed one's real kind clusters); deleted at teardown."""
        name = f"{prefix}-{os.environ[nodes.OWNER_ENV]}-{uuid.uuid4().hex[:6]}"
        self.names.append(name)
        return name

    def clusters(self) -> list[str]:
        return self.run("get", "clusters").stdout.split()

    def api(self, cluster: str) -> KubeAPI:
        """The API of a cluster this kind made (its context must be in self.kubeconfig)."""
        if self.standin:
            return standin.cluster_api(cluster, self.kubeconfig)
        return realkind.cluster_api(cluster, self.kubeconfig)

    @contextlib.contextmanager
    def kubelets(self) -> Iterator[None]:
        """Runs the kubelet stand-in for every stand-in cluster of this session, including
        clusters created later in the block (a real cluster has its own kubelets)."""
        if not self.standin:
            yield
            return
        running: dict[str, Kubelet] = {}

        def poll() -> None:
            for cluster in _owned_clusters() - running.keys():
                kubelet = standin.start_kubelet(cluster)
                if kubelet is not None:
                    running[cluster] = kubelet

        with standin.kubelets_while(poll, running, "kubelet-fleet"):
            yield


@pytest.fixture(
    params=[
        pytest.param("standin", marks=[pytest.mark.docker, pytest.mark.apiserver], id="standin"),
        pytest.param("kind", marks=pytest.mark.cluster, id="kind"),
    ]
)
def kind_cli(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KindCLI]:
    """`kind` for one test: the stand-in first on PATH (or the real kind), a private
    $KUBECONFIG, and every cluster the test created deleted afterwards, even on failure."""
    kubeconfig = tmp_path / "kubeconfig"
    if request.param == "standin":
        cli = KindCLI(str(STANDIN_BIN / "kind"), kubeconfig, standin=True)
        monkeypatch.setenv("PATH", f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}")
        before = _owned_clusters()
    else:
        # Real kind runs on the test-only Docker daemon; the driver under test follows it.
        monkeypatch.setenv("DOCKER_HOST", realkind.DOCKER_HOST)
        cli = KindCLI(_real_kind(), kubeconfig, standin=False)
        before = set(cli.clusters())
    # The driver under test finds the same kind and kubeconfig.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("LACONIC_HELM_KIND", cli.binary)
    try:
        yield cli
    finally:
        made = _owned_clusters() if cli.standin else set(cli.clusters())
        for cluster in sorted((made - before) | set(cli.names)):
            cli.run("delete", "cluster", "--name", cluster, check=False)
