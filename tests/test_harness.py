"""The test harness proves itself: real helm against the stand-in API, real validation,
interruptions that leave what they leave on a real cluster, and the kind stand-in behaving
as kind does. Each test that takes `kube_api` or `kind_cli` also runs against real kind
(marker `cluster`) where LACONIC_HELM_E2E=1."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import kindcli, kindconfig, nodes
from tests.harness.api import KubeAPI
from tests.harness.client import ApiError
from tests.harness.kubelet import normalize_image
from tests.harness.loopback import free_port
from tests.harness.pytest_fixtures import KindCLI

PROBE = Path(__file__).resolve().parent / "harness" / "charts" / "probe"
# An image no node holds, with a policy that forbids pulling it: pods never start, anywhere.
ABSENT_IMAGE = ("--set", "image=laconic-helm.test/absent:1", "--set", "pullPolicy=Never")
# How kind streams a `docker save` into a node.
CTR_IMPORT = (
    "ctr",
    "-n",
    "k8s.io",
    "images",
    "import",
    "--digests",
    "--snapshotter=overlayfs",
    "-",
)


def helm(
    helm_bin: str, api: KubeAPI, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [helm_bin, *args, "--kube-context", api.context],
        env=api.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def history(helm_bin: str, api: KubeAPI, release: str, namespace: str) -> list[tuple[int, str]]:
    out = helm(helm_bin, api, "history", release, "-n", namespace, "-o", "json").stdout
    return [(entry["revision"], entry["status"]) for entry in json.loads(out)]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


def release_record(api: KubeAPI, namespace: str, release: str, revision: int) -> dict[str, Any]:
    """The release as Helm stored it: base64 of gzip in the Secret's base64 data."""
    path = f"/api/v1/namespaces/{namespace}/secrets/sh.helm.release.v1.{release}.v{revision}"
    secret = api.harness.get(path)
    raw = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    return json.loads(gzip.decompress(raw))


# --- a real API under real helm ----------------------------------------------------------------


def test_sigkill_during_wait_leaves_pending_upgrade_and_rollback_recovers(
    kube_api: KubeAPI, namespace: str, helm_bin: str
) -> None:
    rel, chart = "probe", str(PROBE)
    upgrade = ("upgrade", "--install", rel, chart, "-n", namespace, "--wait", "--timeout", "2m")
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{rel}-probe"

    with kube_api.kubelet():
        helm(helm_bin, kube_api, *upgrade)
        helm(helm_bin, kube_api, *upgrade, "--set", "replicas=2")
    # Real controllers made the pods; --wait saw them ready.
    assert kube_api.harness.get(deployment)["status"]["availableReplicas"] == 2
    assert history(helm_bin, kube_api, rel, namespace) == [(1, "superseded"), (2, "deployed")]

    # The third revision's pods never start: helm waits until it is killed, as ansible kills it.
    hung = subprocess.Popen(
        [helm_bin, *upgrade, *ABSENT_IMAGE, "--kube-context", kube_api.context],
        env=kube_api.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            "helm to apply revision 3 and wait",
            lambda: "absent" in json.dumps(kube_api.harness.get(deployment)["spec"]["template"]),
        )
        time.sleep(1)  # well inside --wait now
        assert hung.poll() is None, "helm returned although nothing could become ready"
    finally:
        hung.send_signal(signal.SIGKILL)
        hung.wait()
    assert history(helm_bin, kube_api, rel, namespace)[-1] == (3, "pending-upgrade")
    assert release_record(kube_api, namespace, rel, 3)["info"]["status"] == "pending-upgrade"

    refused = helm(helm_bin, kube_api, *upgrade, check=False)
    assert refused.returncode != 0
    assert "another operation (install/upgrade/rollback) is in progress" in refused.stderr

    # Recovery as the reference recipe says: roll back to the newest good revision.
    with kube_api.kubelet():
        helm(helm_bin, kube_api, "rollback", rel, "2", "-n", namespace, "--wait")
    assert history(helm_bin, kube_api, rel, namespace)[-1] == (4, "deployed")
    status = json.loads(
        helm(helm_bin, kube_api, "status", rel, "-n", namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    assert "absent" not in json.dumps(kube_api.harness.get(deployment)["spec"]["template"])

    helm(helm_bin, kube_api, "uninstall", rel, "-n", namespace, "--wait")
    gone = helm(helm_bin, kube_api, "status", rel, "-n", namespace, check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr
    wait_for(
        "the Deployment to be deleted", lambda: kube_api.harness.get_or_none(deployment) is None
    )


def test_api_refuses_externaltrafficpolicy_on_a_clusterip_service(
    kube_api: KubeAPI, namespace: str, helm_bin: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "direct"},
        "spec": {
            "type": "ClusterIP",
            "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}],
        },
    }
    with pytest.raises(ApiError) as refused:
        kube_api.admin.create(f"/api/v1/namespaces/{namespace}/services", service)
    assert refused.value.status == 422
    assert "externalTrafficPolicy" in refused.value.message

    mark = kube_api.mark()
    bad = ("--set", "service.type=ClusterIP", "--set", "service.externalTrafficPolicy=Local")
    done = helm(
        helm_bin, kube_api, "install", "bad", str(PROBE), "-n", namespace, *bad, check=False
    )
    assert done.returncode != 0
    assert "externalTrafficPolicy" in done.stderr
    services = kube_api.harness.get(f"/api/v1/namespaces/{namespace}/services")["items"]
    assert [s["metadata"]["name"] for s in services] == []
    # The audit log saw helm's attempt, and the API's refusal.
    refusals = [w for w in kube_api.writes_since(mark) if w.resource == "services"]
    assert refusals and all(w.code == 422 for w in refusals)


def test_audit_tells_reads_from_writes(kube_api: KubeAPI, namespace: str, helm_bin: str) -> None:
    install = ("upgrade", "--install", "quiet", str(PROBE), "-n", namespace)
    helm(helm_bin, kube_api, *install)
    mark = kube_api.mark()
    helm(helm_bin, kube_api, "status", "quiet", "-n", namespace)
    helm(helm_bin, kube_api, "history", "quiet", "-n", namespace)
    helm(helm_bin, kube_api, "get", "values", "quiet", "-n", namespace)
    assert kube_api.writes_since(mark) == []
    # Helm redoes an unchanged upgrade: a new revision and patches, all visible.
    helm(helm_bin, kube_api, *install)
    writes = kube_api.writes_since(mark)
    assert any(w.resource == "secrets" and w.verb == "create" for w in writes), writes
    assert {w.namespace for w in writes} == {namespace}


def test_kubelet_standin_schedules_like_a_single_node_cluster(
    kube_api: KubeAPI, namespace: str
) -> None:
    """Two replicas asking for the same hostPort cannot share the one node (Caddy's trap)."""
    labels = {"app": "ports"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ports"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"ingress-ready": "true"},
                    "containers": [
                        {
                            "name": "c",
                            "image": "registry.k8s.io/pause:3.10",
                            "ports": [{"containerPort": 80, "hostPort": 18080}],
                        }
                    ],
                },
            },
        },
    }
    kube_api.admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"

    def settled() -> list[dict[str, Any]] | None:
        pods = kube_api.harness.get(pods_path)["items"]
        phases = sorted(p["status"].get("phase") for p in pods)
        unschedulable = [
            c
            for p in pods
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
        ]
        return pods if phases == ["Pending", "Running"] and unschedulable else None

    with kube_api.kubelet():
        wait_for("one pod running and one unschedulable", settled)
        status = kube_api.harness.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/ports")
        assert status["status"].get("availableReplicas") == 1


def test_kubelet_standin_holds_pods_back_as_a_kubelet_would(
    kube_api: KubeAPI, namespace: str
) -> None:
    """A missing Secret and an unbindable claim keep pods from starting, as on a real node."""
    pods = f"/api/v1/namespaces/{namespace}/pods"
    container = {"name": "c", "image": "registry.k8s.io/pause:3.10"}
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    kube_api.admin.create(
        pods,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "needs-secret"},
            "spec": {"containers": [{**container, "env": env}]},
        },
    )
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {
            "storageClassName": "laconic-helm-absent",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    kube_api.admin.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    kube_api.admin.create(
        pods,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "needs-claim"},
            "spec": {"containers": [container], "volumes": [volume]},
        },
    )

    def waiting(name: str) -> str | None:
        statuses = kube_api.harness.get(f"{pods}/{name}")["status"].get("containerStatuses")
        return ((statuses or [{}])[0].get("state") or {}).get("waiting", {}).get("reason")

    def unschedulable(name: str) -> str | None:
        conditions = kube_api.harness.get(f"{pods}/{name}")["status"].get("conditions", [])
        return next(
            (c.get("message") for c in conditions if c.get("reason") == "Unschedulable"), None
        )

    with kube_api.kubelet():
        # A real kubelet shows ContainerCreating while it sets the sandbox up, then the verdict.
        wait_for(
            "the missing Secret's verdict",
            lambda: waiting("needs-secret") == "CreateContainerConfigError",
        )
        message = wait_for("the unbound claim", lambda: unschedulable("needs-claim"))
        assert "unbound immediate PersistentVolumeClaims" in message
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}}
        kube_api.admin.create(
            f"/api/v1/namespaces/{namespace}/secrets", {**secret, "stringData": {"token": "x"}}
        )
        wait_for(
            "the pod to start once its Secret exists",
            lambda: (
                kube_api.harness.get(f"{pods}/needs-secret")["status"].get("phase") == "Running"
            ),
        )
    assert kube_api.harness.get(f"{pods}/needs-claim")["spec"].get("nodeName") is None


# --- the kind stand-in -------------------------------------------------------------------------


def two_node_config(name: str) -> str:
    return yaml.safe_dump(
        {
            "kind": "Cluster",
            "apiVersion": kindconfig.API_VERSION,
            "name": name,
            "nodes": [{"role": "control-plane"}, {"role": "worker"}],
        }
    )


def build_image(tag: str) -> None:
    """A tiny image built locally (FROM scratch), never pulled from anywhere."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {
            "Dockerfile": b"FROM scratch\nCOPY payload /payload\n",
            "payload": uuid.uuid4().bytes,
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    nodes.docker("build", "-q", "-t", tag, "-", input=context.getvalue())


def test_image_loads_into_both_nodes_of_a_two_node_cluster(
    kind_cli: KindCLI, tmp_path: Path
) -> None:
    name = kind_cli.new_name()
    config = tmp_path / "kind.yaml"
    config.write_text(two_node_config(name))
    kind_cli.run("create", "cluster", "--config", str(config))
    members = kind_cli.run("get", "nodes", "--name", name).stdout.split()
    assert sorted(members) == [f"{name}-control-plane", f"{name}-worker"]

    tag = f"laconic-helm-test/probe:{name}"
    build_image(tag)
    try:
        for node in members:
            # What `kind load docker-image` does, one node after the other.
            save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "exec", "-i", node, *CTR_IMPORT],
                stdin=save.stdout,
                check=True,
                capture_output=True,
            )
            assert save.wait() == 0
        for node in members:
            assert normalize_image(tag) in nodes.ctr_images(node)
    finally:
        nodes.docker("rmi", tag, check=False)


def test_create_refuses_a_taken_name_and_delete_can_repeat(kind_cli: KindCLI) -> None:
    name = kind_cli.new_name()
    kind_cli.run("create", "cluster", "--name", name)
    assert name in kind_cli.clusters()
    contexts = yaml.safe_load(kind_cli.kubeconfig.read_text())
    assert contexts["current-context"] == f"kind-{name}"

    again = kind_cli.run("create", "cluster", "--name", name, check=False)
    assert again.returncode == 1
    assert f'node(s) already exist for a cluster with the name "{name}"' in again.stderr

    for _ in range(2):
        kind_cli.run("delete", "cluster", "--name", name)
        assert name not in kind_cli.clusters()
    left = yaml.safe_load(kind_cli.kubeconfig.read_text())
    # kind leaves no `contexts` key at all once the last one is gone.
    assert f"kind-{name}" not in [c["name"] for c in left.get("contexts") or []]


def test_killed_create_leaves_nodes_that_get_clusters_lists(kind_cli: KindCLI) -> None:
    name = kind_cli.new_name()
    create = kind_cli.start("create", "cluster", "--name", name)
    try:
        wait_for(
            "the first node container",
            lambda: kind_cli.run("get", "nodes", "--name", name).stdout.split(),
            timeout=120,
        )
    finally:
        create.send_signal(signal.SIGKILL)
        create.wait()
    assert name in kind_cli.clusters()
    assert kind_cli.run("get", "nodes", "--name", name).stdout.split()
    assert not kind_cli.kubeconfig.exists() or f"kind-{name}" not in kind_cli.kubeconfig.read_text()
    again = kind_cli.run("create", "cluster", "--name", name, check=False)
    assert again.returncode == 1 and "already exist" in again.stderr

    def deleted() -> bool:
        # A `docker run` the killed kind had started may still finish after a first delete.
        kind_cli.run("delete", "cluster", "--name", name)
        return name not in kind_cli.clusters()

    wait_for("the half-made cluster to be deleted", deleted)


def test_config_reaches_the_nodes_and_the_api(kind_cli: KindCLI, tmp_path: Path) -> None:
    name = kind_cli.new_name()
    mount_root = tmp_path / "mnt"
    mount_root.mkdir()
    (mount_root / "marker").write_text("from the host")
    host_port = free_port()
    patch = "kind: InitConfiguration\nnodeRegistration:\n  kubeletExtraArgs:\n"
    patch += '    node-labels: "ingress-ready=true"\n'
    node: dict[str, Any] = {"role": "control-plane", "labels": {"laconic.test/role": "edge"}}
    if kind_cli.standin:
        node["kubeadmConfigPatches"] = [patch]  # laconic-so's way, which the stand-in reads
    else:
        # kubeadm v1beta4 (Kubernetes 1.36+) takes kubelet flags as a list, and a patch's list
        # replaces the node-labels kind makes of `labels`: real kind gets labels that way only.
        node["labels"]["ingress-ready"] = "true"
    config = {
        "kind": "Cluster",
        "apiVersion": kindconfig.API_VERSION,
        "nodes": [
            {
                **node,
                "extraPortMappings": [
                    {"containerPort": 80, "hostPort": host_port, "listenAddress": "127.0.0.1"}
                ],
                "extraMounts": [
                    {
                        "hostPath": str(mount_root),
                        "containerPath": "/mnt",
                        "propagation": "HostToContainer",
                    }
                ],
            }
        ],
    }
    kind_cli.run("create", "cluster", "--name", name, "--config", "-", input=yaml.safe_dump(config))
    plane = f"{name}-control-plane"
    inspect = json.loads(nodes.docker("inspect", plane))[0]
    assert inspect["Config"]["Labels"][nodes.CLUSTER_LABEL] == name
    assert inspect["Config"]["Labels"][nodes.ROLE_LABEL] == "control-plane"
    bindings = inspect["HostConfig"]["PortBindings"]["80/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]
    mount = next(m for m in inspect["Mounts"] if m["Destination"] == "/mnt")
    assert mount["Source"] == str(mount_root)
    if nodes.mount_propagates(str(mount_root)):  # a sandbox with a private root cannot
        assert mount["Propagation"] == "rslave"
    # kind's node image has cat; the stand-in's has busybox without applet links.
    seen = nodes.docker("exec", plane, "sh", "-c", "cat /mnt/marker || busybox cat /mnt/marker")
    assert seen == "from the host"

    api = kind_cli.api(name)
    labels = api.admin.get(f"/api/v1/nodes/{plane}")["metadata"]["labels"]
    assert labels["ingress-ready"] == "true"
    assert labels["laconic.test/role"] == "edge"
    assert "node-role.kubernetes.io/control-plane" in labels
    # The exported kubeconfig is the one `get kubeconfig` prints, and it reaches that API.
    printed = yaml.safe_load(kind_cli.run("get", "kubeconfig", "--name", name).stdout)
    assert printed["clusters"][0]["cluster"]["server"] == api.server


def test_stand_in_cluster_state_goes_with_its_nodes(kind_cli: KindCLI) -> None:
    """Deleting and re-creating a cluster starts from an empty API, as with kind."""
    name = kind_cli.new_name()
    kind_cli.run("create", "cluster", "--name", name)
    kind_cli.api(name).admin.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "left-behind"}},
    )
    kind_cli.run("delete", "cluster", "--name", name)
    kind_cli.run("create", "cluster", "--name", name)
    assert kind_cli.api(name).admin.get_or_none("/api/v1/namespaces/left-behind") is None


def test_kubelets_follow_clusters_created_later(kind_cli: KindCLI) -> None:
    """A pod starts only when its image is in the node, loaded the way kind loads it."""
    name = kind_cli.new_name()
    with kind_cli.kubelets():
        kind_cli.run("create", "cluster", "--name", name)
        api = kind_cli.api(name)
        namespace = api.create_namespace()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "c", "image": "laconic-helm.test/absent:1", "imagePullPolicy": "Never"}
                ]
            },
        }
        api.admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

        def waiting_reason() -> str | None:
            got = api.harness.get(f"/api/v1/namespaces/{namespace}/pods/p")
            statuses = got["status"].get("containerStatuses") or [{}]
            return statuses[0].get("state", {}).get("waiting", {}).get("reason")

        # A real kubelet shows ContainerCreating while it sets the sandbox up, then the verdict.
        wait_for("the kubelet's verdict", lambda: waiting_reason() == "ErrImageNeverPull")


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.unit
def test_config_is_read_as_strictly_as_kind_reads_it() -> None:
    with pytest.raises(
        kindconfig.ConfigError, match=r"unknown apiVersion: kind\.x-k8s\.io/v1alpha3"
    ):
        kindconfig.parse("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha3\n")
    text = (
        f"kind: Cluster\napiVersion: {kindconfig.API_VERSION}\nnodes:\n- role: worker\n  rol: x\n"
    )
    with pytest.raises(
        kindconfig.ConfigError, match=r"line 5: field rol not found in type v1alpha4\.Node"
    ):
        kindconfig.parse(text)
    workers_only = kindconfig.parse(text.replace("  rol: x\n", ""))
    with pytest.raises(kindconfig.ConfigError, match="must have at least one control-plane node"):
        kindconfig.validate(dataclasses.replace(workers_only, name="x"))


@pytest.mark.unit
def test_nodes_are_named_and_labelled_as_kind_does() -> None:
    config = kindconfig.ClusterConfig(
        name="c",
        nodes=tuple(kindconfig.NodeConfig(role=r) for r in ("control-plane", "worker", "worker")),
    )
    assert kindconfig.node_names(config) == ["c-control-plane", "c-worker", "c-worker2"]
    v1beta4 = "kind: JoinConfiguration\nnodeRegistration:\n  kubeletExtraArgs:\n"
    v1beta4 += "  - name: node-labels\n    value: a=1,b=2\n"
    assert kindconfig.kubeadm_node_labels((v1beta4,), bootstrap=False) == {"a": "1", "b": "2"}
    assert kindconfig.kubeadm_node_labels((v1beta4,), bootstrap=True) == {}


@pytest.mark.unit
def test_kubeconfig_merge_and_removal_keep_other_entries(tmp_path: Path) -> None:
    path = tmp_path / "config"

    def entry(name: str) -> dict[str, Any]:
        return {
            "clusters": [{"name": name, "cluster": {"server": f"https://{name}"}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }

    kindcli.merge_kubeconfig(path, entry("other"))
    kindcli.merge_kubeconfig(path, entry("kind-a"))
    kindcli.merge_kubeconfig(path, entry("kind-a"))
    doc = yaml.safe_load(path.read_text())
    assert [c["name"] for c in doc["contexts"]] == ["other", "kind-a"]
    assert doc["current-context"] == "kind-a"
    kindcli.remove_from_kubeconfigs("a", str(path))
    doc = yaml.safe_load(path.read_text())
    assert [c["name"] for c in doc["contexts"]] == ["other"] and doc["current-context"] == ""


@pytest.mark.unit
def test_image_references_are_named_as_containerd_names_them() -> None:
    assert normalize_image("busybox") == "docker.io/library/busybox:latest"
    assert normalize_image("laconicnetwork/agave:local") == "docker.io/laconicnetwork/agave:local"
    assert normalize_image("ghcr.io/x/y:1") == "ghcr.io/x/y:1"
    assert normalize_image("localhost:5001/y") == "localhost:5001/y:latest"


@pytest.mark.unit
def test_node_image_libraries_are_found_for_static_and_dynamic_programs(tmp_path: Path) -> None:
    """Debian's busybox-static has no libraries (ldd refuses it); a dynamic program has libc."""
    if shutil.which("go") is None:
        pytest.fail("go is not installed: the static program cannot be built")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    (tmp_path / "go.mod").write_text("module static\n\ngo 1.21\n")
    built = subprocess.run(
        ["go", "build", "-o", "static", "."],
        cwd=tmp_path,
        env={**os.environ, "CGO_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert nodes.shared_libraries(str(tmp_path / "static")) == []
    dynamic = nodes.shared_libraries(sys.executable)
    assert any(Path(lib).name.startswith("libc.so") for lib in dynamic)
    assert all(Path(lib).is_file() for lib in dynamic)
