"""A deployment under test: a spec on disk run through the real CLI, the local images it loads,
a kind stand-in to drive for a whole module, and reading back what the cluster then holds
(release records, the objects of each release, node images).

Shared by the end-to-end suites (deploy, faults, bad input, concurrency, secrets), so each of
them judges the end state the same way.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import imagebuild, nodes, standin
from tests.harness.api import KubeAPI
from tests.harness.client import ApiError, Client
from tests.harness.kubelet import Kubelet
from tests.harness.loopback import free_port
from tests.harness.pytest_fixtures import STANDIN_BIN, KindCLI, _owned_clusters

REPO = Path(__file__).resolve().parents[2]


def build_image(ref: str, layers: Sequence[bytes], workdir: Path) -> str:
    """Builds `ref` offline, one layer per element of `layers`; returns its image ID."""
    context = workdir / uuid.uuid4().hex
    context.mkdir(parents=True)
    names = [f"layer{i}" for i in range(len(layers))]
    for name, data in zip(names, layers, strict=True):
        (context / name).write_bytes(data)
    return imagebuild.build(ref, context, names)


def random_bytes(seed: str, size: int) -> bytes:
    """Incompressible bytes, the same for the same seed (layers whose size is what moves)."""
    return random.Random(seed).randbytes(size)


@dataclass
class Run:
    """One finished CLI run."""

    code: int
    report: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        return str(self.report.get("error") or "")


@dataclass
class Deployment:
    """A spec on disk plus the way to run the real CLI on it."""

    spec: Path
    cluster: str
    env: dict[str, str]

    def argv(self, *args: str, json_output: bool = True) -> list[str]:
        output = ["--output", "json"] if json_output else []
        return [sys.executable, "-m", "laconic_helm", *output, *args, "--spec", str(self.spec)]

    def run(
        self, *args: str, timeout: float = 600, json_output: bool = True, traceback: bool = False
    ) -> Run:
        """Runs the CLI to its end; a traceback on stderr fails the calling test unless allowed
        (`-v` logs one with a failure, on purpose)."""
        done = subprocess.run(
            self.argv(*args, json_output=json_output),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert traceback or "Traceback" not in done.stderr, done.stderr
        report = json.loads(done.stdout) if json_output and done.stdout.strip() else {}
        return Run(done.returncode, report, done.stdout, done.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The CLI in the background (JSON report on stdout), for a test to interrupt it."""
        return subprocess.Popen(
            self.argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def state_dir(self) -> Path:
        return Path(self.env["LACONIC_HELM_STATE"])


def driver_env(kind: KindCLI, state: Path, helm: str) -> dict[str, str]:
    """The environment of a driver run against the kind stand-in with helm binary `helm`."""
    return {
        **os.environ,
        "PATH": f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}",
        "KUBECONFIG": str(kind.kubeconfig),
        "LACONIC_HELM_KIND": kind.binary,
        "LACONIC_HELM_HELM": helm,
        "LACONIC_HELM_STATE": str(state),
    }


@contextlib.contextmanager
def standin_kind(workdir: Path) -> Iterator[KindCLI]:
    """The kind stand-in for a whole module (the `kind_cli` fixture is per test): a private
    kubeconfig, and every cluster made meanwhile deleted at the end."""
    kind = KindCLI(str(STANDIN_BIN / "kind"), workdir / "kubeconfig", standin=True)
    before = _owned_clusters()
    try:
        yield kind
    finally:
        for cluster in sorted((_owned_clusters() - before) | set(kind.names)):
            kind.run("delete", "cluster", "--name", cluster, check=False)


# --- the project's two releases, as an operator would deploy them on kind ------------------------


@dataclass(frozen=True)
class Images:
    """Local images standing in for the Caddy controller and the agave node."""

    caddy: str
    agave: str

    @property
    def refs(self) -> tuple[str, str]:
        return (self.caddy, self.agave)


@contextlib.contextmanager
def chart_images(
    layer_sizes: Sequence[Sequence[int]] = ((1 << 20,), (1 << 20,)),
) -> Iterator[Images]:
    """Builds the two images (layers of the given sizes, random content) under names unique to
    this run, and removes them afterwards."""
    repo = f"laconic-helm-test/e2e-{uuid.uuid4().hex[:8]}"
    refs = Images(f"{repo}/caddy:v1", f"{repo}/agave:v1")
    with tempfile.TemporaryDirectory(prefix="laconic-helm-images-") as tmp:
        for ref, sizes in zip(refs.refs, layer_sizes, strict=True):
            layers = [random_bytes(f"{ref}/{i}", size) for i, size in enumerate(sizes)]
            build_image(ref, layers, Path(tmp))
    try:
        yield refs
    finally:
        imagebuild.remove_repository(repo)


def _image_values(ref: str) -> dict[str, Any]:
    repository, _, tag = ref.rpartition(":")
    return {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}}


CADDY_NAMESPACE = "caddy-system"
AGAVE_NAMESPACE = "agave"
IDENTITY_SECRET = "agave-identity"
LEDGER_CLAIM = "agave-ledger"
LEDGER_CLASS = "manual"
LEDGER_VOLUME = "agave-ledger-host"
DATA_MOUNT = "/mnt/laconic-data"  # where the host data folder appears in the node


@dataclass(frozen=True)
class SpecFiles:
    """What a full spec points at on the host: the identity keypair and the data folder."""

    keypair: Path
    data: Path


_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, as Solana prints public keys."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, digit = divmod(number, 58)
        digits = _BASE58[digit] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def keypair_bytes(seed: str) -> bytes:
    """A keypair file as solana-keygen writes it: a JSON list of 64 numbers."""
    return json.dumps(list(random.Random(seed).randbytes(64))).encode()


def full_spec(
    folder: Path,
    cluster: str,
    images: Images,
    files: SpecFiles,
    *,
    agave_values: dict[str, Any] | None = None,
    ports: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The spec document of both releases as an operator runs them on kind: Caddy, then the
    agave test node with its identity keypair from a spec secret and its ledger on a claim
    (bound to a host folder through a PersistentVolume the test provides)."""
    values = REPO / "values"
    http, https = ports or (free_port(), free_port())
    agave = {
        **_image_values(images.agave),
        "identity": {"existingSecret": IDENTITY_SECRET, "secretKey": "identity.json"},
        "volumes": {
            "ledger": {"type": "pvc", "storageClass": LEDGER_CLASS, "size": "1Gi"},
        },
        **(agave_values or {}),
    }
    return {
        "cluster": {
            "name": cluster,
            "ports": [
                {"containerPort": 80, "hostPort": http, "listenAddress": "127.0.0.1"},
                {"containerPort": 443, "hostPort": https, "listenAddress": "127.0.0.1"},
            ],
            "mounts": [{"hostPath": str(files.data), "containerPath": DATA_MOUNT}],
        },
        "images": list(images.refs),
        "imageDelivery": {"mode": "stream"},  # registry mode has tests of its own
        "releases": [
            {
                "name": "caddy-ingress",
                "chart": str(REPO / "charts" / "caddy-ingress"),
                "namespace": CADDY_NAMESPACE,
                "valuesFiles": [str(values / "caddy-ingress" / "kind.yaml")],
                "values": _image_values(images.caddy),
                "images": [images.caddy],
                "timeout": 120,
            },
            {
                "name": "agave",
                "chart": str(REPO / "charts" / "agave"),
                "namespace": AGAVE_NAMESPACE,
                "valuesFiles": [str(values / "agave" / "kind-test.yaml")],
                "values": agave,
                "secrets": [
                    {"name": IDENTITY_SECRET, "files": {"identity.json": str(files.keypair)}}
                ],
                "images": [images.agave],
                "timeout": 120,
            },
        ],
    }


def write_spec(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_files(folder: Path, seed: str) -> SpecFiles:
    """The keypair (0600, as solana-keygen leaves it) and a data folder holding one file."""
    folder.mkdir(parents=True, exist_ok=True)
    keypair = folder / "identity.json"
    keypair.write_bytes(keypair_bytes(seed))
    keypair.chmod(0o600)
    data = folder / "data"
    (data / "ledger").mkdir(parents=True, exist_ok=True)
    (data / "ledger" / "genesis.bin").write_bytes(random_bytes(f"{seed}/genesis", 4096))
    return SpecFiles(keypair, data)


@dataclass
class Stage:
    """What a suite deploys from: the kind stand-in, the name of a cluster on it (made by the
    first deploy), the local images and files the spec names, and the spec itself."""

    kind: KindCLI
    cluster: str
    images: Images
    files: SpecFiles
    doc: dict[str, Any]


@contextlib.contextmanager
def staged(root: Path, name: str) -> Iterator[Stage]:
    """A full spec of both releases for a new stand-in cluster named after `name` (which also
    seeds its keypair), for a module or the session; the images and every cluster made
    meanwhile are removed at the end."""
    with chart_images() as images, standin_kind(root) as kind:
        cluster = kind.new_name(name)
        files = make_files(root / "files", name)
        yield Stage(kind, cluster, images, files, full_spec(root, cluster, images, files))


def ledger_volume(name: str) -> dict[str, Any]:
    """A PersistentVolume for the agave ledger claim: the host data folder, kept when released
    (what an operator provides where no provisioner runs)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": LEDGER_CLASS,
            "claimRef": {"namespace": AGAVE_NAMESPACE, "name": LEDGER_CLAIM},
            "hostPath": {"path": f"{DATA_MOUNT}/ledger", "type": "Directory"},
        },
    }


# --- reading back ----------------------------------------------------------------------------


def decode_release(secret: dict[str, Any]) -> dict[str, Any]:
    """Helm's record: base64 (API) of base64 (helm) of gzipped JSON."""
    raw = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def release_secrets(api: KubeAPI, namespace: str, name: str) -> list[dict[str, Any]]:
    """The release's stored revisions, oldest first."""
    found = api.harness.get(
        f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm,name%3D{name}"
    )
    return sorted(found["items"], key=lambda s: int(s["metadata"]["labels"]["version"]))


def release_statuses(api: KubeAPI, namespace: str, name: str) -> list[str]:
    return [s["metadata"]["labels"]["status"] for s in release_secrets(api, namespace, name)]


def node_image_ids(node: str) -> dict[str, str]:
    """Image name -> target digest, as the node's containerd lists them."""
    out = nodes.docker("exec", node, "ctr", "-n", "k8s.io", "images", "ls")
    found = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            found[parts[0]] = parts[2]
    return found


# Kinds whose objects a release or the driver makes; controllers' own (pods, replica sets,
# endpoints, events, leases) come and go with them and are judged through their owners.
NAMESPACED = (
    ("api/v1", "configmaps"),
    ("api/v1", "secrets"),
    ("api/v1", "services"),
    ("api/v1", "serviceaccounts"),
    ("api/v1", "persistentvolumeclaims"),
    ("apis/apps/v1", "deployments"),
    ("apis/apps/v1", "statefulsets"),
    ("apis/apps/v1", "daemonsets"),
    ("apis/batch/v1", "jobs"),
    ("apis/batch/v1", "cronjobs"),
    ("apis/networking.k8s.io/v1", "ingresses"),
    ("apis/rbac.authorization.k8s.io/v1", "roles"),
    ("apis/rbac.authorization.k8s.io/v1", "rolebindings"),
)
CLUSTER_SCOPED = (
    ("api/v1", "namespaces"),
    ("api/v1", "persistentvolumes"),
    ("apis/rbac.authorization.k8s.io/v1", "clusterroles"),
    ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    ("apis/networking.k8s.io/v1", "ingressclasses"),
    ("apis/node.k8s.io/v1", "runtimeclasses"),
)
_SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


ObjectKey = tuple[str, str, str]  # (plural, namespace or "", name)


def inventory(client: Client) -> dict[ObjectKey, str]:
    """Every object of the kinds above outside the system namespaces, and the cluster-scoped
    ones nobody but a deployment makes (not the control plane's `system:` roles), with its UID."""
    found: dict[ObjectKey, str] = {}
    for group, plural in NAMESPACED:
        for item in client.get(f"/{group}/{plural}")["items"]:
            meta = item["metadata"]
            ns = meta.get("namespace", "")
            if ns in _SYSTEM_NAMESPACES:
                continue
            if plural == "serviceaccounts" and meta["name"] == "default":
                continue
            if plural == "configmaps" and meta["name"] == "kube-root-ca.crt":
                continue
            found[(plural, ns, meta["name"])] = meta["uid"]
    for group, plural in CLUSTER_SCOPED:
        for item in client.get(f"/{group}/{plural}")["items"]:
            meta = item["metadata"]
            name = meta["name"]
            if name in _SYSTEM_NAMESPACES or name.startswith(("system:", "kubeadm:")):
                continue
            if plural in ("clusterroles", "clusterrolebindings") and name in (
                "admin",
                "edit",
                "view",
                "cluster-admin",
            ):
                continue
            found[(plural, "", name)] = meta["uid"]
    return found


@contextlib.contextmanager
def ledger_volumes(clusters: Sequence[str] | None = None) -> Iterator[dict[str, str]]:
    """Keeps the ledger PersistentVolume in every stand-in cluster of this session (or in the
    named ones) while the block runs, creating it as soon as a cluster's API answers: the
    operator's part where no provisioner runs. Yields cluster -> the PV's UID when created."""
    made: dict[str, str] = {}
    stop = threading.Event()
    clients: dict[str, Client] = {}

    def ensure(cluster: str) -> None:
        client = clients.get(cluster)
        if client is None:
            try:
                plane = standin.control_planes(cluster)[0]
                client = Client(standin.credentials(plane, "harness"))
            except (IndexError, RuntimeError):
                return  # still being created
            clients[cluster] = client
        try:
            live = client.get_or_none(f"/api/v1/persistentvolumes/{LEDGER_VOLUME}")
            if live is None:
                live = client.create("/api/v1/persistentvolumes", ledger_volume(LEDGER_VOLUME))
                made[cluster] = live["metadata"]["uid"]
        except (OSError, ApiError, http.client.HTTPException):
            clients.pop(cluster, None)  # not serving (yet, or any more)

    def watch() -> None:
        while not stop.is_set():
            for cluster in clusters if clusters is not None else sorted(_owned_clusters()):
                ensure(cluster)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, name="ledger-volumes", daemon=True)
    watcher.start()
    try:
        yield made
    finally:
        stop.set()
        watcher.join(timeout=30)


@contextlib.contextmanager
def kubelet_for(cluster: str) -> Iterator[None]:
    """Runs the kubelet stand-in for stand-in cluster `cluster` while the block runs, following
    it when it is made, or deleted and made again, meanwhile (a new control-plane container
    gets a new kubelet)."""
    current: dict[str, Kubelet] = {}  # control-plane container ID -> its kubelet

    def plane_id() -> str | None:
        planes = standin.control_planes(cluster)
        if not planes:
            return None
        found = nodes.docker("inspect", "--format", "{{.Id}}", planes[0], check=False).strip()
        return found or None

    def poll() -> None:
        now = plane_id()
        for old in [i for i in current if i != now]:
            current.pop(old).stop()
        if now is not None and now not in current:
            kubelet = standin.start_kubelet(cluster)
            if kubelet is not None:
                current[now] = kubelet

    with standin.kubelets_while(poll, current, f"kubelet-{cluster}"):
        yield


def actions_taken(report: dict[str, Any]) -> list[str]:
    """The actions a deploy reports taking, in order (an up-to-date release is no action)."""
    return [
        line
        for step in report["steps"]
        for line in step["data"].get("actions", [])
        if ": up-to-date " not in line
    ]
