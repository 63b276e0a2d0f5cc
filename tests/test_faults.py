"""Fault injection: interrupt `deploy` anywhere, deploy again, and require the end state of an
uninterrupted deploy.

Each trial puts one stand-in kind cluster (real containerd node, real API, real helm 3 or 4,
the project's charts) into a starting state, runs `deploy` with the kubelet stand-in off where
helm has to be caught waiting, delivers a signal at a named point (tests/harness/injection.py
finds it from the outside: step lines, child processes, bytes streamed, the API), checks the
exit code the README documents, then runs `deploy` again with the kubelet on and checks:
releases deployed at the desired digest, none pending, every image complete in the node, exactly
the objects of an uninterrupted deploy (by the releases' manifests, and against the reference
deploy's inventory), no claim or volume deleted, the host data untouched, no child left behind.

CI runs a fixed sample covering every kind of point and every signal; the full matrix runs with

    LACONIC_HELM_FAULTS=full python -m pytest -m faults --dist load

(--dist load shares the trials between the two workers, each with a world of its own); the
end of the run prints `fault-injection: <tried> tried, <converged> converged, <failed> failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm import containerd
from laconic_helm import images as image_loader
from tests.conftest import helm_binary
from tests.harness import deployment_under_test as dep
from tests.harness import endstate, nodes, standin, waits
from tests.harness import injection as inj
from tests.harness.api import KubeAPI
from tests.harness.client import Client
from tests.harness.kubelet import Kubelet
from tests.harness.pytest_fixtures import KindCLI

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.apiserver]

CADDY, AGAVE = "caddy-ingress", "agave"
NAMESPACES = {CADDY: dep.CADDY_NAMESPACE, AGAVE: dep.AGAVE_NAMESPACE}
# Layer sizes: enough bytes that a stream is caught part-way, few enough to reload per trial.
LAYERS = ((2 << 20, 2 << 20), (4 << 20, 36 << 20, 4 << 20))
STREAM_BYTES = sum(sum(sizes) for sizes in LAYERS)
# Ceilings (polled, so only a run that hangs uses them up): an interrupted run's stop (helm's
# grace included), and the way to an injection point, which may first create the cluster.
INTERRUPTED_WAIT = waits.CEILING
REACH = 2 * waits.CEILING


# --- the world: one cluster reused by the trials, put into each starting state ------------------


@dataclass
class World:
    """The reused cluster, the spec variants deployed on it and what is known of its state."""

    kind: KindCLI
    root: Path
    images: dep.Images
    files: dep.SpecFiles
    cluster: str
    ports: tuple[int, int]
    specs: dict[str, Path] = field(default_factory=dict)
    baseline: set[dep.ObjectKey] = field(default_factory=set)  # a fresh cluster's objects
    golden: dict[str, Any] = field(default_factory=dict)  # what an uninterrupted deploy left
    state: tuple[str, int] | None = None  # (spec variant converged to, helm major)
    _api: KubeAPI | None = None

    @property
    def node(self) -> str:
        return f"{self.cluster}-control-plane"

    @property
    def api(self) -> KubeAPI:
        if self._api is None:
            self._api = self.kind.api(self.cluster)
        return self._api

    @property
    def client(self) -> Client:
        return self.api.harness

    def deployment(self, variant: str, major: int) -> dep.Deployment:
        env = dep.driver_env(self.kind, self.root / "state", helm_binary(major))
        return dep.Deployment(self.specs[variant], self.cluster, env)

    def kubelet(self) -> Kubelet:
        """The kubelet stand-in for this cluster, to run as a context manager."""
        return Kubelet(self.client, standin.has_image)


def _variants(world: World) -> dict[str, dict[str, Any]]:
    """The spec documents the trials deploy: `base` is the deployment itself, the others are
    the ways to reach a starting state (or, `adopt`, the spec of a laconic-so migration)."""

    def make(**kw: Any) -> dict[str, Any]:
        return dep.full_spec(
            world.root, world.cluster, world.images, world.files, ports=world.ports, **kw
        )

    base = make()
    old = make(agave_values={"podLabels": {"laconic-helm.test/revision": "old"}})
    adopt = make()
    adopt["releases"][0]["valuesFiles"].append(
        str(dep.REPO / "values" / "caddy-ingress" / "laconic-so-adopt.yaml")
    )
    return {
        "base": base,
        "old": old,
        "adopt": adopt,
        "caddy": {**base, "releases": base["releases"][:1]},
        "images": {**base, "releases": []},
        "cluster": {**base, "images": [], "releases": []},
    }


def _write_variants(world: World) -> None:
    for name, doc in _variants(world).items():
        folder = world.root / "specs" / name
        folder.mkdir(parents=True, exist_ok=True)
        world.specs[name] = dep.write_spec(folder, doc)


def _converge(world: World, variant: str, major: int) -> None:
    """An uninterrupted deploy of `variant` with the kubelet on; the world then is that."""
    with world.kubelet():
        run = world.deployment(variant, major).run("deploy")
    assert run.code == 0, f"deploy of {variant} failed: {run.error}\n{run.stderr}"
    world.state = (variant, major) if variant in ("base", "adopt", "old") else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("faults")
    with (
        dep.chart_images(LAYERS) as images,
        dep.standin_kind(root) as kind,
    ):
        cluster = kind.new_name("faults")
        made = World(
            kind,
            root,
            images,
            dep.make_files(root / "files", "faults"),
            cluster,
            (dep.free_port(), dep.free_port()),
        )
        _write_variants(made)
        with dep.ledger_volumes([cluster]):
            run = made.deployment("cluster", 4).run("deploy")
            assert run.code == 0, run.stderr
            made.baseline = set(dep.inventory(made.client))
            _converge(made, "base", 4)
            made.golden = _snapshot(made, "base")
            yield made


def _snapshot(world: World, variant: str) -> dict[str, Any]:
    return {
        "inventory": set(_inventory(world.client)),
        "digests": {r: _latest(world.api, r)["info"]["description"] for r in (CADDY, AGAVE)},
        "variant": variant,
    }


def _inventory(client: Client) -> dict[dep.ObjectKey, str]:
    """The deployment's objects, release records left out (failed revisions are history)."""
    return {
        key: uid
        for key, uid in dep.inventory(client).items()
        if not (key[0] == "secrets" and key[2].startswith("sh.helm.release.v1."))
    }


def _latest(api: KubeAPI, release: str) -> dict[str, Any]:
    found = dep.release_secrets(api, NAMESPACES[release], release)
    assert found, f"release {release} has no revision"
    return dep.decode_release(found[-1])


# -- resets (through the harness identity: not part of the audited writes) --------------------


def _delete_all(client: Client, keep: set[dep.ObjectKey], namespaces: set[str] | None) -> None:
    """Deletes what a deployment made (everything not in `keep`); with `namespaces`, only
    those namespaces and no cluster-scoped object. Waits until they are gone."""
    paths = {plural: group for group, plural in (*dep.NAMESPACED, *dep.CLUSTER_SCOPED)}
    doomed = [
        key
        for key in dep.inventory(client)
        if key not in keep
        and (namespaces is None or (key[0] == "namespaces" and key[2] in namespaces))
    ]
    wanted = {name for plural, _, name in doomed if plural == "namespaces"}
    # Workloads and pods first: the namespace controller waits out a pod's grace period
    # (no kubelet finishes it here), while a namespace without pods goes at once.
    for ns in wanted:
        for plural in ("deployments", "statefulsets", "daemonsets"):
            for item in client.get(f"/apis/apps/v1/namespaces/{ns}/{plural}")["items"]:
                client.delete(f"/apis/apps/v1/namespaces/{ns}/{plural}/{item['metadata']['name']}")
    waits.wait_until(lambda: not _force_delete_pods(client, wanted), "pods to be deleted")
    for plural, ns, name in doomed:
        if plural == "namespaces":
            client.delete(f"/api/v1/namespaces/{name}")
        elif not ns and namespaces is None:
            client.delete(f"/{paths[plural]}/{plural}/{name}")
    waits.wait_until(
        lambda: all(client.get_or_none(f"/api/v1/namespaces/{n}") is None for n in wanted),
        f"namespaces {sorted(wanted)} to be deleted",
    )
    if namespaces is None or dep.AGAVE_NAMESPACE in namespaces:
        # The claim went with its namespace: the volume is released; offer it anew.
        client.delete(f"/api/v1/persistentvolumes/{dep.LEDGER_VOLUME}")
        waits.wait_until(lambda: _volume_available(client), "the ledger volume to be offered again")


def _force_delete_pods(client: Client, namespaces: set[str]) -> int:
    """Deletes every pod of `namespaces` without grace; returns how many there were."""
    count = 0
    for ns in namespaces:
        for pod in client.get(f"/api/v1/namespaces/{ns}/pods")["items"]:
            client.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}", 0)
            count += 1
    return count


def _volume_available(client: Client) -> bool:
    pv = client.get_or_none(f"/api/v1/persistentvolumes/{dep.LEDGER_VOLUME}")
    return pv is not None and pv.get("status", {}).get("phase") == "Available"


def _drop_releases(world: World) -> None:
    _delete_all(world.client, world.baseline, None)
    world.state = None


def _drop_images(world: World) -> None:
    """Removes the images and what an interrupted load kept, so the next load moves all."""
    held = dep.node_image_ids(world.node)
    targets = {held.get(image_loader.containerd_name(r)) for r in world.images.refs} - {None}
    # containerd's CRI also names each image by its ID: those names go too.
    gone = [name for name, target in held.items() if target in targets]
    if gone:
        nodes.docker("exec", world.node, "ctr", "-n", "k8s.io", "images", "rm", "--sync", *gone)
    content = nodes.docker("exec", world.node, "ctr", "-n", "k8s.io", "content", "ls")
    for line in content.splitlines()[1:]:
        if containerd.HOLD_MARK in line:
            digest = line.split()[0]
            nodes.docker(
                "exec", world.node, "ctr", "-n", "k8s.io", "content", "label", digest,
                f"{containerd.GC_ROOT}=",
            )  # fmt: skip


def _leave_killed_helm(world: World, major: int, status: str) -> None:
    """Deploys `base` with the kubelet off and SIGKILLs helm once agave's newest revision has
    `status`: what a crash or ansible's process-group kill leaves behind."""
    run = inj.DriverRun(
        world.deployment("base", major).argv("deploy"), world.deployment("base", major).env
    )
    probe = inj.Probe(run, lambda: world.client)
    inj.inject(run, probe, _agave_status(status), "SIGKILL-helm", REACH)
    assert run.wait(INTERRUPTED_WAIT) == 1, run.stderr
    assert dep.release_statuses(world.api, dep.AGAVE_NAMESPACE, AGAVE)[-1] == status


def _leave_uninstalling(world: World, major: int) -> None:
    """An uninstall of agave killed while it waits for an object held by a finalizer."""
    held = f"/api/v1/namespaces/{dep.AGAVE_NAMESPACE}/configmaps/agave-scripts"
    world.client.patch(held, {"metadata": {"finalizers": ["laconic-helm.test/hold"]}})
    argv = [
        helm_binary(major), "uninstall", AGAVE, "--namespace", dep.AGAVE_NAMESPACE, "--wait",
        "--kubeconfig", str(world.root / "state" / "clusters" / world.cluster / "kubeconfig"),
        "--kube-context", f"kind-{world.cluster}",
    ]  # fmt: skip
    helm = subprocess.Popen(argv, env={**os.environ, "HELM_DRIVER": "secret"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        waits.wait_until(
            lambda: (
                dep.release_statuses(world.api, dep.AGAVE_NAMESPACE, AGAVE)[-1] == "uninstalling"
            ),
            "agave to be uninstalling",
        )
    finally:
        helm.kill()
        helm.wait()
    world.client.patch(held, {"metadata": {"finalizers": None}})
    world.state = None


def _leave_laconic_so_objects(world: World) -> None:
    """What laconic-so's create-only install of Caddy leaves: the objects with the names the
    adopt overlay gives, without Helm's ownership metadata."""
    argv = [
        helm_binary(4), "template", CADDY, str(dep.REPO / "charts" / "caddy-ingress"),
        "--namespace", dep.CADDY_NAMESPACE,
        "-f", str(dep.REPO / "values" / "caddy-ingress" / "kind.yaml"),
        "-f", str(dep.REPO / "values" / "caddy-ingress" / "laconic-so-adopt.yaml"),
        "--set", f"image.repository={world.images.caddy.rpartition(':')[0]}",
        "--set", f"image.tag={world.images.caddy.rpartition(':')[2]}",
    ]  # fmt: skip
    docs = [
        d
        for d in yaml.safe_load_all(subprocess.check_output(argv))
        if d and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
    ]
    world.client.create("/api/v1/namespaces", {"metadata": {"name": dep.CADDY_NAMESPACE}})
    for doc in docs:
        meta = doc["metadata"]
        labels = {
            k: v
            for k, v in (meta.get("labels") or {}).items()
            if k not in ("app.kubernetes.io/managed-by", "helm.sh/chart")
        }
        meta["labels"] = labels
        meta.pop("annotations", None)
        if doc["kind"] == "Deployment":
            doc["spec"].pop("strategy", None)  # the API's default, as a plain create leaves it
        _create_plain(world.client, doc)
    world.state = None


def _create_plain(client: Client, doc: dict[str, Any]) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    plural = {
        "ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings", "ConfigMap": "configmaps",
        "Service": "services", "Deployment": "deployments", "IngressClass": "ingressclasses",
        "Role": "roles", "RoleBinding": "rolebindings", "Secret": "secrets",
    }[doc["kind"]]  # fmt: skip
    cluster_scoped = doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "IngressClass")
    ns = "" if cluster_scoped else f"/namespaces/{dep.CADDY_NAMESPACE}"
    client.create(f"{base}{ns}/{plural}", doc)


def prepare(world: World, start: str, major: int) -> None:
    """Puts the world into starting state `start` for a trial with helm `major`."""
    same = world.state is not None and world.state[1] == major
    if start == "cluster":
        _drop_releases(world)
        _drop_images(world)
    elif start == "images":
        _drop_releases(world)
    elif start == "laconic-so":
        _drop_releases(world)
        _leave_laconic_so_objects(world)
    elif start in ("converged", "old", "uninstalling", "pending-upgrade"):
        if not (same and world.state is not None and world.state[0] == "base"):
            _drop_releases(world)
            _converge(world, "base", major)
        if start == "uninstalling":
            _leave_uninstalling(world, major)
        elif start in ("old", "pending-upgrade"):
            _converge(world, "old", major)
            if start == "pending-upgrade":
                _leave_killed_helm(world, major, "pending-upgrade")
    elif start in ("caddy", "pending-install"):
        if same and world.state is not None and world.state[0] in ("base", "old"):
            _delete_all(world.client, set(), {dep.AGAVE_NAMESPACE})
        else:
            _drop_releases(world)
            _converge(world, "caddy", major)
        world.state = None
        if start == "pending-install":
            _leave_killed_helm(world, major, "pending-install")
    else:
        raise ValueError(f"unknown starting state {start}")
    if start in ("cluster", "images", "laconic-so"):
        world.state = None


# --- the points -----------------------------------------------------------------------------


def _agave_status(status: str) -> inj.Trigger:
    return _release_status(AGAVE, status)


def _release_status(release: str, status: str) -> inj.Trigger:
    ns = NAMESPACES[release]
    query = f"/api/v1/namespaces/{ns}/secrets?labelSelector=owner%3Dhelm,name%3D{release}"

    def check(client: Client) -> bool:
        items = client.get(query)["items"]
        if not items:
            return False
        newest = max(items, key=lambda s: int(s["metadata"]["labels"]["version"]))
        return newest["metadata"]["labels"]["status"] == status

    return inj.api_holds(check)


def _exists(path: str) -> inj.Trigger:
    return inj.api_holds(lambda client: client.get_or_none(path) is not None)


def _helm_running(*words: str) -> inj.Trigger:
    return lambda probe: any(c.is_helm and c.has(*words) for c in probe.run.children())


def _stamped(probe_path: str) -> inj.Trigger:
    """Once the object at `probe_path` carries Helm's ownership label (adoption under way)."""

    def check(client: Client) -> bool:
        found = client.get_or_none(probe_path)
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        return labels.get("app.kubernetes.io/managed-by") == "Helm"

    return inj.api_holds(check)


WorldTrigger = Callable[["Context"], inj.Trigger]


@dataclass(frozen=True)
class Point:
    """A named place in a deploy, the state it is reached from and how it is recognised."""

    name: str
    kind: str  # boundary | cluster | images | release | upgrade | recovery | adoption
    start: str  # starting state ("nothing": no cluster at all)
    trigger: WorldTrigger
    kubelet: bool = False  # the kubelet stand-in runs during the interrupted run
    helm: bool = False  # helm runs at the point: SIGKILL to helm alone is tried too
    variant: str = "base"
    codes: tuple[int, ...] = ()  # for SIGINT/SIGTERM, when other than 3
    early: bool = False  # may land while Python itself starts, before any of the driver runs


@dataclass
class Context:
    """What a trigger needs to know about the trial's deployment."""

    cluster: str
    state_dir: Path
    kubeconfig: Path
    api: Callable[[], Client | None]


def _deploy_namespace(release: str) -> WorldTrigger:
    return lambda ctx: _exists(f"/api/v1/namespaces/{NAMESPACES[release]}")


def _deployment_exists(release: str, name: str) -> WorldTrigger:
    path = f"/apis/apps/v1/namespaces/{NAMESPACES[release]}/deployments/{name}"
    return lambda ctx: inj.all_of(_release_status(release, "pending-install"), _exists(path))


POINTS: tuple[Point, ...] = (
    # Step boundaries (a run from nothing until the cluster exists, then on the reused one).
    Point("start/at-once", "boundary", "images", lambda ctx: inj.at_once(), early=True),
    Point(
        "start/lock-taken",
        "boundary",
        "images",
        lambda ctx: inj.file_holds(
            ctx.state_dir / "locks" / f"{ctx.cluster}.lock", lambda p: str(p.run.pid)
        ),
    ),
    Point("after/preflight", "boundary", "nothing", lambda ctx: inj.after_line("✓ preflight")),
    Point("after/cluster", "boundary", "cluster", lambda ctx: inj.after_line("✓ cluster ")),
    Point("after/images", "boundary", "cluster", lambda ctx: inj.after_line("✓ images into")),
    Point(
        "after/release-caddy",
        "boundary",
        "images",
        lambda ctx: inj.after_line("✓ release caddy-ingress"),
        kubelet=True,
    ),
    Point(
        "after/release-agave",
        "boundary",
        "caddy",
        lambda ctx: inj.after_line("✓ release agave"),
        kubelet=True,
        codes=(0, 3),
    ),
    # Inside the cluster step: kind create and what follows it.
    Point(
        "cluster/kind-create-started",
        "cluster",
        "nothing",
        lambda ctx: inj.child("create", "cluster"),
    ),
    Point(
        "cluster/node-container-made",
        "cluster",
        "nothing",
        lambda ctx: inj.all_of(
            inj.child("create", "cluster"),
            inj.docker_has(f"label={nodes.CLUSTER_LABEL}={ctx.cluster}"),
        ),
    ),
    Point(
        "cluster/kubeconfig-exported",
        "cluster",
        "nothing",
        lambda ctx: inj.file_holds(ctx.kubeconfig, lambda p: f"kind-{ctx.cluster}"),
    ),
    Point(
        "cluster/after-kind-create",
        "cluster",
        "nothing",
        lambda ctx: inj.child_ended("create", "cluster", before_line="✓ cluster "),
    ),
    # Inside the images step: the save starts, the stream part-way, the import done.
    Point("images/save-started", "images", "cluster", lambda ctx: inj.child("docker", "save")),
    *(
        Point(
            f"images/stream-{int(f * 100)}%",
            "images",
            "cluster",
            lambda ctx, f=f: inj.streamed(f, STREAM_BYTES),
        )
        for f in (0.1, 0.4, 0.7, 0.95)
    ),
    Point(
        "images/after-import",
        "images",
        "cluster",
        lambda ctx: inj.child_ended("ctr", "import", before_line="✓ images into"),
    ),
    # Inside each release: observe, namespace and Secret, helm started, recorded, waiting.
    *(
        point
        for release, start, workload in (
            (CADDY, "images", "caddy-ingress"),
            (AGAVE, "caddy", "agave"),
        )
        for point in (
            Point(
                f"{release}/observe",
                "release",
                start,
                lambda ctx, r=release: _helm_running("template", r),
                helm=True,
            ),
            Point(f"{release}/namespace-made", "release", start, _deploy_namespace(release)),
            Point(
                f"{release}/helm-started",
                "release",
                start,
                lambda ctx, r=release: _helm_running("upgrade", r),
                helm=True,
            ),
            Point(
                f"{release}/pending-install",
                "release",
                start,
                lambda ctx, r=release: _release_status(r, "pending-install"),
                helm=True,
            ),
            Point(
                f"{release}/waiting",
                "release",
                start,
                _deployment_exists(release, workload),
                helm=True,
            ),
        )
    ),
    Point(
        "agave/secret-applied",
        "release",
        "caddy",
        lambda ctx: _exists(
            f"/api/v1/namespaces/{dep.AGAVE_NAMESPACE}/secrets/{dep.IDENTITY_SECRET}"
        ),
    ),
    # An upgrade (the values changed): helm started, then waiting on the new pods.
    Point(
        "upgrade/helm-started",
        "upgrade",
        "old",
        lambda ctx: _helm_running("upgrade", AGAVE),
        helm=True,
    ),
    Point(
        "upgrade/pending-upgrade",
        "upgrade",
        "old",
        lambda ctx: _agave_status("pending-upgrade"),
        helm=True,
    ),
    # Recovery of what a killed helm left: while deciding, after the unlock, while upgrading.
    Point(
        "recover-install/observe",
        "recovery",
        "pending-install",
        lambda ctx: _helm_running("template", AGAVE),
        helm=True,
    ),
    Point(
        "recover-install/unlocked",
        "recovery",
        "pending-install",
        lambda ctx: _agave_status("failed"),
    ),
    Point(
        "recover-install/upgrading",
        "recovery",
        "pending-install",
        lambda ctx: _agave_status("pending-upgrade"),
        helm=True,
    ),
    Point(
        "recover-upgrade/unlocked",
        "recovery",
        "pending-upgrade",
        lambda ctx: _agave_status("failed"),
    ),
    Point(
        "recover-upgrade/upgrading",
        "recovery",
        "pending-upgrade",
        lambda ctx: _helm_running("upgrade", AGAVE),
        helm=True,
    ),
    Point(
        "recover-uninstalling/uninstall",
        "recovery",
        "uninstalling",
        lambda ctx: _helm_running("uninstall", AGAVE),
        helm=True,
    ),
    Point(
        "recover-uninstalling/reinstall",
        "recovery",
        "uninstalling",
        lambda ctx: _helm_running("upgrade", AGAVE),
        helm=True,
    ),
    # Adoption of laconic-so's Caddy objects: stamped, helm taking over, waiting.
    Point(
        "adopt/first-stamped",
        "adoption",
        "laconic-so",
        lambda ctx: _stamped(
            f"/api/v1/namespaces/{dep.CADDY_NAMESPACE}/serviceaccounts/caddy-ingress-controller"
        ),
        variant="adopt",
    ),
    Point(
        "adopt/helm-started",
        "adoption",
        "laconic-so",
        lambda ctx: _helm_running("upgrade", CADDY),
        helm=True,
        variant="adopt",
    ),
    Point(
        "adopt/pending-install",
        "adoption",
        "laconic-so",
        lambda ctx: _release_status(CADDY, "pending-install"),
        helm=True,
        variant="adopt",
    ),
)


# --- the matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    point: Point
    signal: str
    major: int

    @property
    def id(self) -> str:
        return f"{self.point.name}-{self.signal}-helm{self.major}"


def _matrix() -> list[Trial]:
    """Every point with SIGINT, SIGTERM and SIGKILL to the driver, plus SIGKILL to helm where
    helm runs; Helm 4 and 3 alternate, so each point and each signal meets both."""
    trials = []
    for i, point in enumerate(POINTS):
        signals = inj.SIGNALS if point.helm else inj.SIGNALS[:3]
        for j, how in enumerate(signals):
            trials.append(Trial(point, how, 4 if (i + j) % 2 == 0 else 3))
    return trials


# CI's sample: each kind of point and each signal at least once, both helm majors, one trial
# from nothing (a cluster of its own); the rest reuse the world's cluster.
CI_SAMPLE = (
    ("cluster/kind-create-started", "SIGKILL"),
    ("after/images", "SIGTERM"),
    ("images/stream-40%", "SIGINT"),
    ("caddy-ingress/pending-install", "SIGKILL-helm"),
    ("agave/waiting", "SIGTERM"),
    ("upgrade/pending-upgrade", "SIGINT"),
    ("recover-install/unlocked", "SIGKILL"),
    ("recover-uninstalling/uninstall", "SIGTERM"),
    ("adopt/first-stamped", "SIGINT"),
    ("adopt/pending-install", "SIGKILL-helm"),
)


def _selected() -> list[Trial]:
    trials = _matrix()
    if os.environ.get("LACONIC_HELM_FAULTS") != "full":
        wanted = set(CI_SAMPLE)
        trials = [t for t in trials if (t.point.name, t.signal) in wanted]
        assert len(trials) == len(wanted), "a CI sample entry names no trial"
    # Trials of one helm major run together: the world's releases are rebuilt on a switch.
    return sorted(trials, key=lambda t: (t.point.start != "nothing", -t.major))


# --- running a trial ------------------------------------------------------------------------


def _client_getter(world: World) -> Callable[[], Client | None]:
    """The cluster's API for triggers: None until the cluster's control plane answers."""
    cached: list[Client] = []

    def get() -> Client | None:
        if cached:
            return cached[0]
        try:
            plane = standin.control_planes(world.cluster)[0]
            client = Client(standin.credentials(plane, "harness"), timeout=5)
        except (IndexError, RuntimeError):
            return None
        if not client.ready():
            return None
        cached.append(client)
        return client

    return get


@contextlib.contextmanager
def _kubelet_if(world: World, on: bool, fresh: bool) -> Iterator[None]:
    """The kubelet stand-in for the run when `on`; for a `fresh` cluster, one that follows it
    being made (or deleted and made again) during the run."""
    if not on:
        yield
    elif fresh:
        with dep.kubelet_for(world.cluster):
            yield
    else:
        with world.kubelet():
            yield


def _expect_interrupted(trial: Trial, run: inj.DriverRun, code: int) -> None:
    """The first run's exit code is the one the README documents for the signal."""
    report, where = run.report, f"{trial.id}: exit {code}\n{run.stderr}"
    if trial.point.early and not report and "laconic_helm" not in run.stderr:
        # Before the interpreter ran any of the driver, Python dies its own way (the README
        # says so); nothing can have been done.
        signum = signal.Signals[trial.signal.removesuffix("-helm")]
        assert code == -signum or (code == 1 and "Fatal Python error" in run.stderr), where
        return
    if trial.signal in ("SIGINT", "SIGTERM") and code != 3 and code in trial.point.codes:
        return  # a point where the README allows another exit (see the point's codes)
    inj.expect_documented_exit(trial.signal, run, code, where)


def run_trial(world: World, trial: Trial) -> None:
    point = trial.point
    deployment = world.deployment(point.variant, trial.major)
    api = _client_getter(world)
    exists = point.start != "nothing"
    mark = world.api.mark() if exists else 0
    before = _claim_uid(world.api) if exists else None
    data = (world.files.data / "ledger" / "genesis.bin").read_bytes()
    ctx = Context(world.cluster, deployment.state_dir, world.kind.kubeconfig, api)

    with _kubelet_if(world, point.kubelet, fresh=not exists):
        run, code, fired = inj.interrupt(
            deployment.argv("deploy"), deployment.env, api, point.trigger(ctx), trial.signal,
            reach=REACH, stop=INTERRUPTED_WAIT,
        )  # fmt: skip
    _expect_interrupted(trial, run, code)

    with _kubelet_if(world, True, fresh=not exists):
        second = deployment.run("deploy")
    assert second.code == 0, (
        f"{trial.id} (signal at {fired}): re-run failed: {second.error}\n{second.stderr}"
    )
    world.state = (point.variant, trial.major)
    check_converged(world, point.variant, mark, before, data)


def _claim_uid(api: KubeAPI) -> str | None:
    claim = api.harness.get_or_none(
        f"/api/v1/namespaces/{dep.AGAVE_NAMESPACE}/persistentvolumeclaims/{dep.LEDGER_CLAIM}"
    )
    return None if claim is None else str(claim["metadata"]["uid"])


# --- the end state --------------------------------------------------------------------------


def check_converged(world: World, variant: str, mark: int, claim: str | None, data: bytes) -> None:
    """The end state of an uninterrupted deploy of `variant`, and nothing lost on the way."""
    api = world.api
    spec = yaml.safe_load(world.specs[variant].read_text())
    digests = endstate.expected_digests(world.specs[variant])
    expected = set(world.baseline) | {("persistentvolumes", "", dep.LEDGER_VOLUME)}
    for release in spec["releases"]:
        name, ns = release["name"], release["namespace"]
        record = endstate.converged_release(api, ns, name, digests[name])
        expected |= endstate.manifest_keys(record) | {("namespaces", "", ns)}
        expected |= {("secrets", ns, s["name"]) for s in release.get("secrets", [])}
    live = _inventory(api.harness)
    assert not set(live) - expected, f"objects no deploy makes: {sorted(set(live) - expected)}"
    assert not expected - set(live), f"objects missing: {sorted(expected - set(live))}"
    if variant == world.golden.get("variant"):  # the reference deploy's own end state
        assert set(live) == world.golden["inventory"]
        if "digests" in world.golden:
            stored = {r: _latest(api, r)["info"]["description"] for r in (CADDY, AGAVE)}
            assert stored == world.golden["digests"]

    for ns in {r["namespace"] for r in spec["releases"]}:
        for item in api.harness.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]:
            wanted = item["spec"].get("replicas", 1)
            ready = item.get("status", {}).get("readyReplicas", 0)
            assert ready == wanted, f"deployment {ns}/{item['metadata']['name']} not ready"

    wanted_images = asyncio.run(image_loader.check_images(spec["images"]))
    state = asyncio.run(containerd.get_node_state(world.node))
    for image in wanted_images:
        assert state.holds(image), f"node {world.node} lacks {image.ref}"
    assert not state.marked(), "an interrupted load's marks were left behind"

    deleted = [
        w for w in api.writes_since(mark)
        if w.verb == "delete" and w.resource in ("persistentvolumeclaims", "persistentvolumes")
    ]  # fmt: skip
    assert not deleted, f"data deleted: {deleted}"
    if claim is not None:
        assert _claim_uid(api) == claim, "the ledger claim was replaced"
    assert (world.files.data / "ledger" / "genesis.bin").read_bytes() == data
    left = endstate.pids_using(world.root / "state")
    assert not left, f"processes left working: {left}"


# --- the test -------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", _selected(), ids=lambda t: t.id)
def test_interrupted_deploy_converges_on_the_next_run(
    trial: Trial, world: World, tmp_path: Path
) -> None:
    if trial.point.start != "nothing":
        prepare(world, trial.point.start, trial.major)
        run_trial(world, trial)
        return
    fresh = World(
        world.kind, tmp_path, world.images, dep.make_files(tmp_path / "files", trial.id),
        world.kind.new_name("fault"), (dep.free_port(), dep.free_port()),
        # Its own keypair files give agave another digest: only the inventory must match.
        baseline=world.baseline,
        golden={k: v for k, v in world.golden.items() if k != "digests"},
    )  # fmt: skip
    _write_variants(fresh)
    try:
        with dep.ledger_volumes([fresh.cluster]):
            run_trial(fresh, trial)
    finally:
        world.kind.run("delete", "cluster", "--name", fresh.cluster, check=False)
