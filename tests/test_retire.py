"""retire: laconic-so's objects are retired only once their replacement exists, never data,
with the grace period the node needs; and the first deploy from an imported laconic-so spec
takes the cluster laconic-so left over (kind stand-in seeded with laconic-so's objects, the real
CLI, real helm 3 and 4, the real charts)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from laconic_helm import kube, retire, spec
from laconic_helm.errors import ReleaseError
from tests.harness import laconic_so, nodes
from tests.harness.api import KubeAPI
from tests.harness.deployment_under_test import (
    Deployment,
    build_image,
    driver_env,
    release_statuses,
)
from tests.harness.pytest_fixtures import KindCLI

APP = "laconic-3k7m2ab"
OLD_AGAVE = f"{APP}-agave-deployment"
GRACE = 600


def _eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# -- the retire steps against the session's API, with no kubelet -----------------------------
# Pods are bound to the node by hand and nothing finishes their deletion, so what the deletion
# asked for (the grace period) stays visible on them.


def _so_deployment(api: KubeAPI, ns: str, name: str, component: str) -> None:
    """A Deployment as laconic-so makes one (app label, Recreate, the default 30 s grace)."""
    labels = {
        "app": APP,
        "app.kubernetes.io/stack": "agave",
        "app.kubernetes.io/component": component,
    }
    selector = {"app": APP, "app.kubernetes.io/component": component}
    api.harness.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": component, "image": "laconic/so:1"}]},
                },
            },
        },
    )


def _pods(api: KubeAPI, ns: str, component: str) -> list[dict[str, Any]]:
    selector = f"app%3D{APP},app.kubernetes.io%2Fcomponent%3D{component}"
    return api.harness.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")["items"]


def _bound_pod(api: KubeAPI, ns: str, component: str) -> dict[str, Any]:
    """The Deployment's pod, once its controllers made it, bound to the node."""
    pod = _eventually(lambda: _pods(api, ns, component), f"the {component} pod")[0]
    node = api.harness.get("/api/v1/nodes")["items"][0]["metadata"]["name"]
    name = pod["metadata"]["name"]
    api.harness.create(
        f"/api/v1/namespaces/{ns}/pods/{name}/binding",
        {"metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
    )
    return pod


def _release_workload(api: KubeAPI, ns: str) -> None:
    """The agave release's own Deployment (no replicas: only its existence counts here)."""
    labels = {"app.kubernetes.io/name": "agave"}
    api.harness.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "metadata": {
                "name": "agave",
                "labels": {**labels, kube.MANAGED_BY: kube.HELM},
                "annotations": {kube.RELEASE_NAME: "agave", kube.RELEASE_NAMESPACE: ns},
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "agave", "image": "agave:1"}]},
                },
            },
        },
    )


def _service(api: KubeAPI, ns: str, name: str, labels: dict[str, str], **meta: Any) -> None:
    api.harness.create(
        f"/api/v1/namespaces/{ns}/services",
        {
            "metadata": {"name": name, "labels": labels, **meta},
            "spec": {"selector": {"app": APP}, "ports": [{"port": 8899}]},
        },
    )


def _retiring(ns: str, *objects: tuple[str, str]) -> spec.Release:
    return spec.Release.model_validate(
        {
            "name": "agave",
            "chart": "builtin:agave",
            "namespace": ns,
            "retire": {
                "selector": f"app={APP}",
                "gracePeriodSeconds": GRACE,
                "objects": [{"kind": kind, "name": name} for kind, name in objects],
            },
        }
    )


def _old_replica_sets(api: KubeAPI, ns: str) -> list[str]:
    found = api.harness.get(f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
    return [rs["metadata"]["name"] for rs in found if rs["metadata"]["name"].startswith(OLD_AGAVE)]


# These drive the retire steps with no kubelet: the test binds laconic-so's pods itself and
# reads their graceful deletion, which a real kubelet finishes at once for a pod that never ran.
_BINDS_PODS = pytest.mark.standin_only("binds pods itself; reads deletions no kubelet finishes")


@pytest.fixture
def k(kube_api: KubeAPI) -> kube.Kube:
    return kube.Kube.connect(kube_api.kubeconfig, kube_api.context)


def _get(api: KubeAPI, path: str) -> dict[str, Any] | None:
    return api.harness.get_or_none(path)


@_BINDS_PODS
@pytest.mark.apiserver
def test_a_retired_deployments_pod_gets_the_grace_period_and_no_successor(
    kube_api: KubeAPI, namespace: str, k: kube.Kube
) -> None:
    ns, apps = namespace, f"/apis/apps/v1/namespaces/{namespace}"
    _so_deployment(kube_api, ns, OLD_AGAVE, "agave")
    _so_deployment(kube_api, ns, f"{APP}-doublezero-deployment", "doublezero")
    old = _bound_pod(kube_api, ns, "agave")
    sibling = _bound_pod(kube_api, ns, "doublezero")
    _service(kube_api, ns, f"{APP}-agave-service", {"app": APP})
    _release_workload(kube_api, ns)
    release = _retiring(ns, ("Deployment", OLD_AGAVE), ("Service", f"{APP}-agave-service"))

    planned = retire.plan_retire(release, asyncio.run(retire.observe_retire(k, release)))
    assert [a.line() for a in planned] == [
        f"release/agave: retire-object Deployment {ns}/{OLD_AGAVE} "
        f"(1 pod(s) stop with a {GRACE} s grace period)",
        f"release/agave: retire-object Service {ns}/{APP}-agave-service "
        "(left by the previous installer)",
    ]
    done = asyncio.run(retire.ensure_retired(k, release))
    assert [a.verb for a in done] == ["retire-object", "retire-object"]

    _eventually(lambda: _get(kube_api, f"{apps}/deployments/{OLD_AGAVE}") is None, "Deployment")
    _eventually(lambda: not _old_replica_sets(kube_api, ns), "the ReplicaSet to go")
    pod = _get(kube_api, f"/api/v1/namespaces/{ns}/pods/{old['metadata']['name']}")
    assert pod is not None and pod["metadata"]["deletionTimestamp"]
    assert pod["metadata"]["deletionGracePeriodSeconds"] == GRACE
    assert _get(kube_api, f"/api/v1/namespaces/{ns}/services/{APP}-agave-service") is None
    time.sleep(3)  # a controller that still owned the pod would have replaced it by now
    assert [p["metadata"]["name"] for p in _pods(kube_api, ns, "agave")] == [
        old["metadata"]["name"]
    ]
    # laconic-so's other Deployment carries the same app label and stays as it was.
    assert _get(kube_api, f"{apps}/deployments/{APP}-doublezero-deployment") is not None
    [kept] = _pods(kube_api, ns, "doublezero")
    assert kept["metadata"]["uid"] == sibling["metadata"]["uid"]
    assert not kept["metadata"].get("deletionTimestamp")

    mark = kube_api.mark()
    assert asyncio.run(retire.ensure_retired(k, release)) == []
    assert kube_api.writes_since(mark) == []


@pytest.mark.apiserver
def test_objects_that_are_not_the_installers_stay(
    kube_api: KubeAPI, namespace: str, k: kube.Kube
) -> None:
    ns = namespace
    _service(kube_api, ns, f"{APP}-agave-service", {"app": "someone-else"})
    owned = {kube.RELEASE_NAME: "other", kube.RELEASE_NAMESPACE: ns}
    _service(kube_api, ns, f"{APP}-ingress-svc", {"app": APP}, annotations=owned)
    release = _retiring(
        ns,
        ("Service", f"{APP}-agave-service"),
        ("Service", f"{APP}-ingress-svc"),
        ("Ingress", f"{APP}-ingress"),  # absent: nothing to do
    )
    planned = retire.plan_retire(release, asyncio.run(retire.observe_retire(k, release)))
    assert [(a.verb, a.target) for a in planned] == [
        ("keep-object", f"Service {ns}/{APP}-agave-service"),
        ("keep-object", f"Service {ns}/{APP}-ingress-svc"),
    ]
    assert f"lacks the label app={APP}" in planned[0].detail
    assert f"Helm release {ns}/other owns it" in planned[1].detail
    mark = kube_api.mark()
    assert asyncio.run(retire.ensure_retired(k, release)) == planned
    assert kube_api.writes_since(mark) == []


@_BINDS_PODS
@pytest.mark.apiserver
def test_an_interrupted_retire_is_finished_from_the_orphans(
    kube_api: KubeAPI, namespace: str, k: kube.Kube
) -> None:
    ns, apps = namespace, f"/apis/apps/v1/namespaces/{namespace}"
    _so_deployment(kube_api, ns, OLD_AGAVE, "agave")
    old = _bound_pod(kube_api, ns, "agave")
    _release_workload(kube_api, ns)
    # A run stopped right after its first step: the Deployment deleted, its children orphaned.
    kube_api.harness.request(
        "DELETE", f"{apps}/deployments/{OLD_AGAVE}", {"propagationPolicy": "Orphan"}
    )
    _eventually(lambda: _get(kube_api, f"{apps}/deployments/{OLD_AGAVE}") is None, "Deployment")
    release = _retiring(ns, ("Deployment", OLD_AGAVE))

    [leftover] = asyncio.run(retire.observe_retire(k, release))
    assert leftover.uid is None and len(leftover.replica_sets) == 1 and len(leftover.pods) == 1
    assert [a.detail for a in retire.plan_retire(release, [leftover])] == [
        f"the Deployment is already gone; 1 pod(s) stop with a {GRACE} s grace period"
    ]
    asyncio.run(retire.ensure_retired(k, release))
    pod = _get(kube_api, f"/api/v1/namespaces/{ns}/pods/{old['metadata']['name']}")
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == GRACE
    _eventually(lambda: not _old_replica_sets(kube_api, ns), "the ReplicaSet to go")


@_BINDS_PODS
@pytest.mark.apiserver
def test_the_old_workload_stays_until_the_release_has_its_own(
    kube_api: KubeAPI, namespace: str, k: kube.Kube
) -> None:
    ns = namespace
    _so_deployment(kube_api, ns, OLD_AGAVE, "agave")
    old = _bound_pod(kube_api, ns, "agave")
    release = _retiring(ns, ("Deployment", OLD_AGAVE))
    mark = kube_api.mark()
    with pytest.raises(ReleaseError, match="has no workload"):
        asyncio.run(retire.ensure_retired(k, release))
    assert kube_api.writes_since(mark) == []
    pod = _get(kube_api, f"/api/v1/namespaces/{ns}/pods/{old['metadata']['name']}")
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")


# -- the first deploy over laconic-so's cluster ----------------------------------------------

# What the caddy-ingress chart runs with the imported values (controller, certificate backup);
# a registry would provide them, here stand-ins are built and loaded into the node.
CADDY_IMAGES = ("caddy/ingress:v0.2.1", "alpine/kubectl:1.35.3")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Caddy images (when absent) and a stand-in agave image under a unique name."""
    work = tmp_path_factory.mktemp("images")
    for ref in CADDY_IMAGES:
        if not nodes.docker("images", "-q", ref).strip():
            build_image(ref, [f"stand-in for {ref}\n".encode()], work)
    agave = f"laconic-helm-test/takeover-{uuid.uuid4().hex[:8]}/agave:local"
    build_image(agave, [b"stand-in for laconic-so's agave image\n"], work)
    yield agave
    subprocess.run(["docker", "rmi", "-f", agave], capture_output=True, check=False)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "laconic_helm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _uids(api: KubeAPI, paths: list[str]) -> dict[str, str | None]:
    found = {p: api.harness.get_or_none(p) for p in paths}
    return {p: (o["metadata"]["uid"] if o else None) for p, o in found.items()}


def _placed_pods(api: KubeAPI, ns: str, prefix: str, *, running: bool) -> list[dict[str, Any]]:
    """Pods named `prefix`... bound to a node and not being deleted (and running, if asked)."""
    return [
        p
        for p in api.harness.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        if p["metadata"]["name"].startswith(prefix)
        and p["spec"].get("nodeName")
        and not p["metadata"].get("deletionTimestamp")
        and (p["status"].get("phase") == "Running" or not running)
    ]


# Each helm major takes over one kind of node: an rpc node, which the deploy does not wait for,
# and a test node, which it waits for once laconic-so's pod has freed the host ports.
MODE_BY_HELM = {4: "rpc", 3: "test"}


@pytest.mark.standin_only("laconic-so's cluster is staged for the stand-in (random images)")
@pytest.mark.apiserver
@pytest.mark.docker
@pytest.mark.helm
def test_first_deploy_takes_a_laconic_so_cluster_over(
    kind_cli: KindCLI, helm_bin: str, images: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    mode = MODE_BY_HELM[request.node.callspec.params["helm_bin"]]
    cluster = kind_cli.new_name("laconic")
    deployment = laconic_so.stage_on_standin(tmp_path, cluster, images)
    env_file = deployment / "config.env"
    env_file.write_text(env_file.read_text().replace("AGAVE_MODE=rpc", f"AGAVE_MODE={mode}"))
    kind_cli.run(
        "create", "cluster", "--name", cluster, "--config", f"{deployment}/kind-config.yml"
    )
    api = kind_cli.api(cluster)
    env = driver_env(kind_cli, tmp_path / "state", helm_bin)
    with kind_cli.kubelets():
        seeded = laconic_so.seed(api.harness, deployment)
        ns, old_agave = seeded.namespace, seeded.deployments["agave"]
        # laconic-so's node is placed and holds the host ports the new one needs (its image,
        # from laconic-so's registry, is not in the node: it waits in ErrImagePull).
        old_pod = _eventually(
            lambda: _placed_pods(api, ns, f"{old_agave}-", running=False),
            "laconic-so's agave pod to be placed",
        )[0]
        loaded = _cli(env, "images", "load", "--cluster", cluster, *CADDY_IMAGES)
        assert loaded.returncode == 0, loaded.stderr

        out = tmp_path / "helm"
        imported = _cli(env, "import", "laconic-so", "--dir", str(deployment), "--out", str(out))
        assert imported.returncode == 0, imported.stderr
        helm = Deployment(out / "deployment.yaml", cluster, env)
        kept_before = _uids(api, seeded.kept)
        assert None not in kept_before.values()

        # The dry run lists every adoption, creation and removal, and writes nothing.
        mark = api.mark()
        dry = helm.run("deploy", "--dry-run", "--adopt-cluster")
        assert dry.code == 0, dry.stderr
        assert api.writes_since(mark) == []
        planned = dry.report["actions"]
        caddy, agave = "release/caddy-ingress", "release/agave"
        adopted = {
            line.split(" adopt-object ")[1].split(" (")[0]
            for line in planned
            if line.startswith(f"{caddy}: adopt-object ")
        }
        assert adopted == {
            "ServiceAccount caddy-system/caddy-ingress-controller",
            "ClusterRole caddy-ingress-controller",
            "ClusterRoleBinding caddy-ingress-controller",
            "ConfigMap caddy-system/caddy-ingress-controller-configmap",
            "Service caddy-system/caddy-ingress-controller",
            "Deployment caddy-system/caddy-ingress-controller",
            "IngressClass caddy",
        }
        objects = dry.report["objects"]  # what helm's upgrade will create: shown, not actions
        assert any(line.startswith(f"{agave}: create-object Deployment {ns}/") for line in objects)
        assert (
            f"{agave}: retire-object Deployment {ns}/{old_agave} "
            f"(1 pod(s) stop with a {GRACE} s grace period)" in planned
        )
        assert f"{caddy}: retire-object CronJob caddy-system/caddy-cert-backup " in " ".join(
            planned
        )
        retired = [line for line in planned if " retire-object " in line]
        assert not any(
            kind in line for line in retired for kind in ("PersistentVolume", "ConfigMap")
        )

        mark = api.mark()
        done = helm.run("deploy", "--adopt-cluster")
        assert done.code == 0, done.stderr
        writes = api.writes_since(mark)
        text = done.stdout + done.stderr
        for refusal in ("AlreadyExists", "already exists", "invalid ownership metadata"):
            assert refusal not in text
        steps = {s["name"]: s for s in done.report["steps"]}
        assert any(" retire-object " in a for a in steps["release agave"]["data"]["actions"])

        # The old node went only once the new one existed, and no data object was deleted.
        order = [(w.verb, w.resource, w.name) for w in writes if w.resource == "deployments"]
        first_new = next(i for i, (_, _, name) in enumerate(order) if name == "agave")
        assert order.index(("delete", "deployments", old_agave)) > first_new
        deleted = {w.resource for w in writes if w.verb in ("delete", "deletecollection")}
        assert deleted <= {"deployments", "replicasets", "pods", "services", "ingresses"} | {
            "cronjobs",
            "roles",
            "rolebindings",
            "serviceaccounts",
        }

        # Caddy: one release, laconic-so's names, its certificate untouched.
        assert release_statuses(api, "caddy-system", "caddy-ingress") == ["deployed"]
        caddy_deployment = api.harness.get(
            "/apis/apps/v1/namespaces/caddy-system/deployments/caddy-ingress-controller"
        )
        owner = kube.owner_of(caddy_deployment)
        assert owner.is_release("caddy-ingress", "caddy-system")
        containers = [c["name"] for c in caddy_deployment["spec"]["template"]["spec"]["containers"]]
        assert containers == ["caddy-ingress-controller", "cert-backup"]  # none left beside them
        for path in (
            "/apis/batch/v1/namespaces/caddy-system/cronjobs/caddy-cert-backup",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/caddy-system/roles/caddy-cert-backup",
        ):
            assert api.harness.get_or_none(path) is None

        # The data and everything else laconic-so made stays; its node's objects are gone.
        assert _uids(api, seeded.kept) == kept_before
        for folder in laconic_so.data_folders(deployment):
            assert (folder / "laconic-so-data.bin").stat().st_size == 4096
        gone = [
            f"/apis/apps/v1/namespaces/{ns}/deployments/{old_agave}",
            f"/api/v1/namespaces/{ns}/services/{seeded.app}-agave-service",
            f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{seeded.app}-ingress",
        ] + [
            p
            for p in seeded.paths
            if f"/services/{seeded.app}-nodeport-" in p
            and not p.endswith(("-8086-tcp", "-3000-tcp"))  # monitoring's, not the node's
        ]
        assert {p: api.harness.get_or_none(p) for p in gone} == dict.fromkeys(gone)
        left = [seeded.deployment_path("doublezero"), seeded.deployment_path("monitoring")]
        assert all(api.harness.get_or_none(p) is not None for p in left)

        # One agave node at the end: the release's, placed once the old pod freed the ports (a
        # test node was waited for: it runs already).
        assert release_statuses(api, ns, "agave") == ["deployed"]
        workloads = asyncio.run(_release_workloads(api, ns))
        assert [w["metadata"]["name"] for w in workloads] == ["agave"]
        if mode == "test":
            assert _placed_pods(api, ns, "agave-", running=True)
        new_pod = _eventually(
            lambda: _placed_pods(api, ns, "agave-", running=True), "the release's agave pod to run"
        )[0]
        assert new_pod["spec"]["hostNetwork"] is True
        assert (
            api.harness.get_or_none(f"/api/v1/namespaces/{ns}/pods/{old_pod['metadata']['name']}")
            is None
        )
        agaves = [
            d["metadata"]["name"]
            for d in api.harness.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]
            if "agave" in d["metadata"]["name"]
        ]
        assert agaves == ["agave"]

        # Nothing left to do: the next run writes nothing.
        mark = api.mark()
        again = helm.run("deploy")
        assert again.code == 0, again.stderr
        assert again.report["changed"] is False
        assert api.writes_since(mark) == []


async def _release_workloads(api: KubeAPI, ns: str) -> list[dict[str, Any]]:
    k = kube.Kube.connect(api.kubeconfig, api.context)
    return await retire.release_workloads(k, "agave", ns)
