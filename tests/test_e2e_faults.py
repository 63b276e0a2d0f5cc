"""Kill anywhere, on real kind: `deploy` interrupted during `kind create`, during the image
load, while each release's helm waits for its pods and while it takes laconic-so's Caddy over,
then deployed again; the second run must reach the end state of an uninterrupted deploy, and the
node must serve JSON-RPC through Caddy. Also the seed bug itself: laconic-so's create-only
install killed by a timeout after Caddy, which no later laconic-so start survived.

One cluster for the module (tests/harness/e2e.py's node, its ledger on a host folder), put into
each trial's starting state by the harness (helm uninstall, `ctr images rm`, `kind delete`, or
laconic-so's objects); the points are found from the outside as in tests/test_faults.py
(tests/harness/injection.py). The end of the run prints
`fault-injection: <tried> tried, <converged> converged, <failed> failed`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from laconic_helm import containerd
from laconic_helm import images as image_loader
from tests.harness import deployment_under_test as dep
from tests.harness import e2e, endstate, laconic_so, nodes, realkind
from tests.harness import injection as inj
from tests.harness.client import Client

pytestmark = pytest.mark.cluster

CADDY, AGAVE = e2e.CADDY, e2e.AGAVE
LEDGER_IN_NODE = "/mnt/agave-ledger"
INTERRUPTED_WAIT = 120.0  # seconds an interrupted run may take to stop (helm's grace included)
ADOPT_VALUES = str(e2e.REPO / "values" / "caddy-ingress" / "laconic-so-adopt.yaml")


@dataclass
class World:
    """The module's node, its spec variants, and what its uninterrupted deploy left."""

    node: e2e.Node
    specs: dict[str, Path]
    ledger: Path  # the host folder the node's ledger lives in
    golden: set[dep.ObjectKey]
    state: str = "base"  # base | adopt | other (the variant the cluster is converged to)

    def deployment(self, variant: str) -> dep.Deployment:
        return dep.Deployment(self.specs[variant], self.node.cluster, self.node.env)

    def client(self) -> Client:
        return self.node.api().harness


def _variants(node: e2e.Node) -> dict[str, Path]:
    """`base`: the node; `adopt`: the same with laconic-so's Caddy names (the spec an import of
    a laconic-so deployment gives)."""
    base = yaml.safe_load(node.deployment.spec.read_text())
    adopt = yaml.safe_load(node.deployment.spec.read_text())
    adopt["releases"][0]["valuesFiles"].append(ADOPT_VALUES)
    specs = {}
    for name, doc in (("base", base), ("adopt", adopt)):
        folder = node.root / "specs" / name
        folder.mkdir(parents=True, exist_ok=True)
        specs[name] = dep.write_spec(folder, doc)
    return specs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("e2e-faults")
    ledger = root / "ledger"
    ledger.mkdir()
    (ledger / "host-data.bin").write_bytes(os.urandom(4096))
    node = e2e.make(
        root,
        f"faults-{os.environ[nodes.OWNER_ENV]}-kind",
        agave={"volumes": {"ledger": {"type": "hostPath", "hostPath": LEDGER_IN_NODE}}},
        mounts=[{"hostPath": str(ledger), "containerPath": LEDGER_IN_NODE}],
    )
    try:
        first = node.deployment.run("deploy", timeout=900)
        assert first.code == 0, f"{first.error}\n{first.stderr}"
        made = World(node, _variants(node), ledger, set())
        made.golden = set(_inventory(made.client()))
        yield made
    finally:
        e2e.delete_cluster(node)


# --- starting states (made through the harness, not the driver) ------------------------------


def _uninstall(world: World, release: str) -> None:
    """The release and its namespace gone, as if never installed."""
    ns = e2e.NAMESPACES[release]
    world.node.helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "180s")
    world.node.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout", "180s")
    client = world.client()
    _wait_for(lambda: client.get_or_none(f"/api/v1/namespaces/{ns}") is None, f"{ns} to go")


def _drop_images(world: World) -> None:
    """The deployment's images removed from the node, so the next load moves every byte
    (containerd's CRI also names each image by its ID: those names go too)."""
    names = {image_loader.containerd_name(ref) for ref in realkind.test_images().values()}
    listed = [line.split() for line in _node_ctr(world, "images", "ls").splitlines()[1:]]
    targets = {row[2] for row in listed if row[0] in names}
    gone = [row[0] for row in listed if row[2] in targets]
    if gone:
        _node_ctr(world, "images", "rm", "--sync", *gone)


def _node_ctr(world: World, *args: str) -> str:
    return subprocess.run(
        ["docker", "exec", world.node.node, "ctr", "-n", "k8s.io", *args],
        env=world.node.env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _converge(world: World, variant: str) -> None:
    run = world.deployment(variant).run("deploy", timeout=900)
    assert run.code == 0, f"deploy of {variant} failed: {run.error}\n{run.stderr}"
    world.state = variant


def _leave_laconic_so_caddy(world: World) -> Path:
    """laconic-so's Caddy objects in place of the release's; returns laconic-so's deployment
    dir (the staged fixture)."""
    for release in (CADDY, AGAVE):
        _uninstall(world, release)
    world.state = "other"
    deployment = laconic_so.stage(world.node.root / f"laconic-so-{time.monotonic_ns()}")
    laconic_so.create_caddy(world.client(), deployment)
    return deployment


def prepare(world: World, start: str) -> None:
    if start != "nothing" and world.state != "base":
        if world.state == "adopt":  # laconic-so's names: not the base variant's objects
            _uninstall(world, CADDY)
        _converge(world, "base")
    if start == "nothing":
        e2e.delete_cluster(world.node)
        world.state = "other"
    elif start == "images":
        _drop_images(world)
    elif start in (CADDY, AGAVE):
        _uninstall(world, start)
        world.state = "other"
    elif start == "laconic-so":
        _leave_laconic_so_caddy(world)
    else:
        raise ValueError(f"unknown starting state {start}")


# --- the points ------------------------------------------------------------------------------


def _release_status(release: str, status: str) -> Callable[[Client], bool]:
    ns = e2e.NAMESPACES[release]
    query = f"/api/v1/namespaces/{ns}/secrets?labelSelector=owner%3Dhelm,name%3D{release}"

    def check(client: Client) -> bool:
        items = client.get(query)["items"]
        newest = max(items, key=lambda s: int(s["metadata"]["labels"]["version"]), default=None)
        return newest is not None and newest["metadata"]["labels"]["status"] == status

    return check


def _helm_waiting(release: str, deployment: str) -> inj.Trigger:
    """helm has installed `release` and waits for its Deployment's pods."""
    path = f"/apis/apps/v1/namespaces/{e2e.NAMESPACES[release]}/deployments/{deployment}"
    pending = _release_status(release, "pending-install")
    return inj.api_holds(lambda c: pending(c) and c.get_or_none(path) is not None, seconds=0.2)


def _stamped(path: str) -> inj.Trigger:
    """The driver has put Helm's ownership on laconic-so's object at `path`."""

    def check(client: Client) -> bool:
        labels = ((client.get_or_none(path) or {}).get("metadata") or {}).get("labels") or {}
        return labels.get("app.kubernetes.io/managed-by") == "Helm"

    return inj.api_holds(check, seconds=0.2)


@dataclass(frozen=True)
class Point:
    name: str
    start: str  # nothing | images | caddy-ingress | agave | laconic-so
    trigger: Callable[[World], inj.Trigger]
    variant: str = "base"


POINTS = {
    p.name: p
    for p in (
        Point("cluster/kind-create", "nothing", lambda w: inj.child("create", "cluster")),
        Point(
            "cluster/node-made",
            "nothing",
            lambda w: inj.all_of(
                inj.child("create", "cluster"),
                inj.every(1, lambda p: _node_running(w)),
            ),
        ),
        Point(
            "images/stream-40%",
            "images",
            lambda w: inj.streamed(0.4, _image_bytes(("caddy",))),
        ),
        Point("images/import", "images", lambda w: inj.child("ctr", "import")),
        Point(
            "caddy-ingress/waiting",
            CADDY,
            lambda w: _helm_waiting(CADDY, "caddy-ingress"),
        ),
        Point("agave/waiting", AGAVE, lambda w: _helm_waiting(AGAVE, "agave")),
        Point(
            "takeover/first-stamped",
            "laconic-so",
            lambda w: _stamped(
                f"/api/v1/namespaces/caddy-system/serviceaccounts/{laconic_so.CADDY_NAME}"
            ),
            variant="adopt",
        ),
        Point(
            "takeover/waiting",
            "laconic-so",
            lambda w: _helm_waiting(CADDY, laconic_so.CADDY_NAME),
            variant="adopt",
        ),
    )
}

# Every kind of point with SIGKILL and SIGTERM (SIGINT where a person would press Ctrl-C), and
# helm alone SIGKILLed where helm waits: what ansible's timeout, a crash or the OOM killer do.
TRIALS = (
    ("cluster/kind-create", "SIGKILL"),
    ("cluster/node-made", "SIGTERM"),
    ("images/stream-40%", "SIGKILL"),
    ("images/stream-40%", "SIGTERM"),
    ("images/import", "SIGINT"),
    ("caddy-ingress/waiting", "SIGKILL"),
    ("caddy-ingress/waiting", "SIGTERM"),
    ("caddy-ingress/waiting", "SIGKILL-helm"),
    ("agave/waiting", "SIGKILL"),
    ("agave/waiting", "SIGINT"),
    ("agave/waiting", "SIGKILL-helm"),
    ("takeover/first-stamped", "SIGTERM"),
    ("takeover/waiting", "SIGKILL"),
    ("takeover/waiting", "SIGKILL-helm"),
)


def _node_running(world: World) -> bool:
    done = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", world.node.node],
        env=world.node.env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() == "true"


def _image_bytes(roles: tuple[str, ...]) -> int:
    """Bytes `docker save` gives for the test images of `roles` (the stream's size)."""
    images = realkind.test_images()
    total = 0
    for role in roles:
        done = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", images[role]],
            env=realkind.docker_env(), capture_output=True, text=True, check=True,
        )  # fmt: skip
        total += int(done.stdout)
    return total


# --- a trial ---------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize(
    "name,how", TRIALS, ids=[f"{n}-{h}".replace("/", "-").replace("%", "pct") for n, h in TRIALS]
)
def test_interrupted_deploy_converges_on_the_next_run(world: World, name: str, how: str) -> None:
    point = POINTS[name]
    prepare(world, point.start)
    exists = point.start != "nothing"
    mark = world.node.api().mark() if exists else None
    deployment = world.deployment(point.variant)
    run, code, fired = inj.interrupt(
        deployment.argv("deploy"), deployment.env, _client_getter(world), point.trigger(world),
        how, reach=300, stop=INTERRUPTED_WAIT,
    )  # fmt: skip
    inj.expect_documented_exit(how, run, code, f"{how}: exit {code}\n{run.stderr}")

    second = deployment.run("deploy", timeout=900)
    assert second.code == 0, f"re-run after {fired} failed: {second.error}\n{second.stderr}"
    for refusal in ("AlreadyExists", "already exists", "invalid ownership metadata"):
        assert refusal not in second.stdout + second.stderr
    world.state = point.variant
    check_converged(world, point.variant, mark)


def _client_getter(world: World) -> Callable[[], Client | None]:
    """The cluster's API for triggers: None while the cluster does not answer yet."""
    cached: list[Client] = []

    def get() -> Client | None:
        if not cached:
            try:
                client = world.client()
            except (OSError, RuntimeError, subprocess.CalledProcessError):
                return None
            if not client.ready():
                return None
            cached.append(client)
        return cached[0]

    return get


# --- the end state ---------------------------------------------------------------------------


def _inventory(client: Client) -> dict[dep.ObjectKey, str]:
    """The deployment's objects; release records (failed revisions are history) and Caddy's own
    certificate store (its Secrets come as it issues) are left out."""
    return {
        key: uid
        for key, uid in dep.inventory(client).items()
        if not (key[0] == "secrets" and key[2].startswith(("sh.helm.release.v1.", "caddy.")))
    }


def check_converged(world: World, variant: str, mark: int | None) -> None:
    """The end state of an uninterrupted deploy of `variant`, nothing lost, the node serving."""
    api = world.node.api()
    client = api.harness
    spec = yaml.safe_load(world.specs[variant].read_text())
    with realkind.docker_host():
        digests = endstate.expected_digests(world.specs[variant])
    expected: set[dep.ObjectKey] = set()
    for release in spec["releases"]:
        name, ns = release["name"], release["namespace"]
        record = endstate.converged_release(api, ns, name, digests[name])
        expected |= endstate.manifest_keys(record) | {("namespaces", "", ns)}
        expected |= {("secrets", ns, s["name"]) for s in release.get("secrets", [])}
    live = set(_inventory(client))
    if variant == "base":
        assert live == world.golden, (
            f"not the uninterrupted deploy's objects: extra {sorted(live - world.golden)}, "
            f"missing {sorted(world.golden - live)}"
        )
    else:
        assert expected <= live, f"objects missing: {sorted(expected - live)}"
    for ns in {r["namespace"] for r in spec["releases"]}:
        for item in client.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]:
            wanted, status = item["spec"].get("replicas", 1), item.get("status", {})
            assert status.get("readyReplicas", 0) == wanted, f"{item['metadata']['name']} unready"

    held = set(_node_ctr(world, "images", "ls", "-q").split())
    for ref in spec["images"]:
        assert image_loader.containerd_name(ref) in held, f"node lacks {ref}"
    content = _node_ctr(world, "content", "ls")
    assert containerd.HOLD_MARK not in content, "an interrupted load's marks were left"

    if mark is not None:
        lost = [
            w for w in api.writes_since(mark)
            if w.verb in ("delete", "deletecollection")
            and (w.resource in ("persistentvolumeclaims", "persistentvolumes")
                 or (w.resource == "secrets" and (w.name or "").startswith("caddy.")))
        ]  # fmt: skip
        assert not lost, f"data deleted: {lost}"
    assert (world.ledger / "host-data.bin").stat().st_size == 4096
    left = endstate.pids_using(world.node.root / "state")
    assert not left, f"processes left working: {left}"
    world.node.wait_serving()


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# --- the seed bug ----------------------------------------------------------------------------

SCALED_TIMEOUT = 30  # ansible's 600 s, scaled down to this suite's images


def test_the_seed_bug_laconic_so_killed_after_caddy_then_deploy_converges(world: World) -> None:
    """laconic-so's start, killed by the timeout after Caddy and before the app, left a cluster
    every later laconic-so start failed on (AlreadyExists); `laconic-helm deploy` of the
    imported spec takes that cluster as it is and serves the app through Caddy."""
    for release in (CADDY, AGAVE):
        _uninstall(world, release)
    world.state = "other"
    deployment = laconic_so.stage(world.node.root / "laconic-so-seed")
    agave_image = realkind.test_images()["agave"]
    argv = [
        "timeout", "--signal=KILL", str(SCALED_TIMEOUT), sys.executable, "-m",
        "tests.harness.laconic_so", str(world.node.kubeconfig), str(deployment),
        world.node.cluster, agave_image,
    ]  # fmt: skip
    first = subprocess.run(
        argv, cwd=e2e.REPO, env=world.node.env, capture_output=True, text=True, check=False
    )
    assert first.returncode == -signal.SIGKILL, first  # timeout KILLs itself with its command
    assert "caddy installed; loading images" in first.stdout
    assert "images loaded" not in first.stdout
    again = subprocess.run(
        argv, cwd=e2e.REPO, env=world.node.env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "AlreadyExists" in again.stderr, again  # the bug itself
    client = world.client()
    cert = f"/api/v1/namespaces/caddy-system/secrets/{laconic_so.CERT_SECRET}"
    cert_uid = client.get(cert)["metadata"]["uid"]
    mark = world.node.api().mark()

    done = world.deployment("adopt").run("deploy", timeout=900)
    assert done.code == 0, f"{done.error}\n{done.stderr}"
    for refusal in ("AlreadyExists", "already exists", "invalid ownership metadata"):
        assert refusal not in done.stdout + done.stderr
    world.state = "adopt"
    assert client.get(cert)["metadata"]["uid"] == cert_uid  # laconic-so's certificate kept
    check_converged(world, "adopt", mark)
    assert world.node.rpc("getHealth")["result"] == "ok"
