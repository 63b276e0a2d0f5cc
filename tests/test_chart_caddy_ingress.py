"""The caddy-ingress chart, rendered and linted with real Helm 4 and Helm 3."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.charts_support import (
    CHARTS,
    NAMESPACE,
    Scenario,
    all_scenarios,
    ci_by_name,
    containers,
    of_kind,
    one,
    pod_annotations,
    pod_spec,
    render,
    render_error,
    workload,
)
from tests.harness.laconic_so import CADDY_OBJECTS

if TYPE_CHECKING:
    pass

CHART = "caddy-ingress"
DEFAULTS = Scenario(CHART, ())
SCENARIOS = all_scenarios(CHART)
CI = ci_by_name(CHART)
ADOPT = Scenario(
    CHART,
    (
        CHARTS.parent / "values" / CHART / "biscayne.yaml",
        CHARTS.parent / "values" / CHART / "laconic-so-adopt.yaml",
    ),
)
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "IngressClass")

pytestmark = pytest.mark.helm


def controller(docs: list[dict]) -> dict:
    """The controller container: always the pod's first."""
    return pod_spec(docs)["containers"][0]


def uses_host_ports(docs: list[dict]) -> bool:
    return any("hostPort" in p for c in containers(docs) for p in c.get("ports", []))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_host_ports_mean_one_replica_replaced_not_surged(helm_bin: str, scenario: Scenario) -> None:
    docs = render(helm_bin, scenario)
    if uses_host_ports(docs):
        assert workload(docs)["spec"]["replicas"] == 1
        assert workload(docs)["spec"]["strategy"] == {"type": "Recreate"}


def test_kind_mode_binds_host_ports_on_the_ingress_ready_node(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS)
    ports = {p["name"]: p for p in controller(docs)["ports"]}
    assert (ports["http"]["hostPort"], ports["https"]["hostPort"]) == (80, 443)
    spec = pod_spec(docs)
    assert spec["nodeSelector"]["ingress-ready"] == "true"
    assert {
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in spec["tolerations"]


def test_without_kind_mode_there_are_no_host_ports_and_updates_roll(helm_bin: str) -> None:
    docs = render(helm_bin, CI["cluster-values"])
    assert not uses_host_ports(docs)
    assert workload(docs)["spec"]["replicas"] == 2
    assert workload(docs)["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "ingress-ready" not in pod_spec(docs).get("nodeSelector", {})


def test_two_replicas_with_host_ports_are_refused(helm_bin: str) -> None:
    error = render_error(helm_bin, DEFAULTS, "replicaCount=2")
    assert "replicaCount is 2" in error and "kind.enabled" in error


def test_cluster_scoped_objects_are_named_per_release(helm_bin: str) -> None:
    first = render(helm_bin, DEFAULTS, release="caddy-a")
    second = render(helm_bin, DEFAULTS, release="caddy-b")
    for kind in CLUSTER_SCOPED:
        names_a = {d["metadata"]["name"] for d in of_kind(first, kind)}
        names_b = {d["metadata"]["name"] for d in of_kind(second, kind)}
        assert names_a and not names_a & names_b, kind
        assert not names_a & {"caddy", "caddy-ingress-controller"}, kind


def test_controller_serves_the_class_it_creates(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS, release="edge")
    ingress_class = one(docs, "IngressClass")
    assert ingress_class["spec"]["controller"] == "caddy.io/ingress-controller"
    assert f"-class-name={ingress_class['metadata']['name']}" in controller(docs)["args"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(docs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]


def test_adoption_overlay_renders_laconic_so_names(helm_bin: str) -> None:
    docs = render(helm_bin, ADOPT, release="caddy-ingress", namespace="caddy-system")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] != "Pod"}
    assert names >= CADDY_OBJECTS
    # A Deployment's selector cannot change, so adoption needs laconic-so's exactly.
    assert workload(docs)["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "caddy-ingress-controller",
        "app.kubernetes.io/instance": "caddy-ingress",
        "app.kubernetes.io/component": "controller",
    }
    assert one(docs, "IngressClass")["metadata"]["annotations"] == {
        "ingressclass.kubernetes.io/is-default-class": "true"
    }
    # Adoption patches the live Deployment: a container of another name would be added beside
    # laconic-so's, both on host ports 80/443, which the API refuses.
    assert controller(docs)["name"] == "caddy-ingress-controller"
    assert controller(docs)["args"][:2] == [
        "-config-map=caddy-ingress-controller-configmap",
        "-class-name=caddy",
    ]


@pytest.mark.parametrize("service_type", ["ClusterIP", "NodePort", "LoadBalancer"])
def test_service_never_takes_a_shape_the_api_rejects(helm_bin: str, service_type: str) -> None:
    docs = render(
        helm_bin,
        DEFAULTS,
        f"service.type={service_type}",
        "service.externalTrafficPolicy=Local",
        "service.httpNodePort=30080",
    )
    spec = one(docs, "Service", f"rel-{CHART}")["spec"]
    if service_type == "ClusterIP":
        assert "externalTrafficPolicy" not in spec
        assert all("nodePort" not in p for p in spec["ports"])
    else:
        assert spec["externalTrafficPolicy"] == "Local"
        assert spec["ports"][0]["nodePort"] == 30080


def test_acme_and_controller_switches_reach_the_controller(helm_bin: str) -> None:
    docs = render(helm_bin, CI["nodeport-values"], "watchNamespace=apps")
    data = one(docs, "ConfigMap", f"rel-{CHART}-configmap")["data"]
    assert data["email"] == "ops@example.org"
    assert data["acmeCA"].startswith("https://acme-staging-v02")
    assert data["debug"] == "true"
    args = controller(docs)["args"]
    assert {"-verbose", "-namespace=apps", "-class-name-required=true"} <= set(args)


def test_changed_config_rolls_the_pod(helm_bin: str) -> None:
    before = pod_annotations(render(helm_bin, DEFAULTS))
    after = pod_annotations(render(helm_bin, DEFAULTS, "acme.email=new@example.org"))
    assert after["checksum/config"] != before["checksum/config"]


def test_probes_check_the_health_endpoint(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS)
    container = controller(docs)
    health_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert health_port == 9765
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_laconic_fork_is_selectable_and_needs_a_pinned_tag(helm_bin: str) -> None:
    fork = controller(render(helm_bin, CI["laconic-fork-values"]))["image"]
    assert fork == "ghcr.io/laconicnetwork/caddy-ingress:v0.2.1-ci"
    assert controller(render(helm_bin, DEFAULTS))["image"] == "caddy/ingress:v0.2.1"
    assert "image.tag must be set" in render_error(helm_bin, DEFAULTS, "image.variant=laconic")
    digest = "sha256:" + "0123456789abcdef" * 4
    by_digest = controller(
        render(helm_bin, DEFAULTS, "image.variant=laconic", f"image.digest={digest}")
    )
    assert by_digest["image"] == f"ghcr.io/laconicnetwork/caddy-ingress@{digest}"
    assert 'image.tag must be a pinned tag, not "latest"' in render_error(
        helm_bin, DEFAULTS, "image.tag=latest"
    )


def test_certificates_are_restored_before_the_controller_and_backed_up_beside_it(
    helm_bin: str,
) -> None:
    docs = render(helm_bin, CI["cert-backup-values"])
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["cert-restore"]
    assert [c["name"] for c in spec["containers"]] == ["controller", "cert-backup"]
    backup_volume = next(v for v in spec["volumes"] if v["name"] == "cert-backup")
    assert backup_volume["hostPath"] == {
        "path": "/mnt/caddy-cert-backup",
        "type": "DirectoryOrCreate",
    }
    restore_mounts = {m["name"]: m for m in spec["initContainers"][0]["volumeMounts"]}
    assert restore_mounts["cert-backup"]["readOnly"] is True
    # Secrets are read and created in the release namespace only.
    role = one(docs, "Role", f"rel-{CHART}-cert-backup")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create"]}
    ]
    binding = one(docs, "RoleBinding", f"rel-{CHART}-cert-backup")
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    scripts = one(docs, "ConfigMap", f"rel-{CHART}-cert-backup")["data"]
    assert set(scripts) == {"cert-restore.sh", "cert-backup.sh"}


def test_without_cert_backup_nothing_touches_the_host(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS)
    assert "initContainers" not in pod_spec(docs)
    assert not [r for r in of_kind(docs, "Role") if "cert-backup" in r["metadata"]["name"]]
    assert all("hostPath" not in v for v in pod_spec(docs)["volumes"])


def test_helm_test_pod_checks_both_service_ports(helm_bin: str) -> None:
    pod = one(render(helm_bin, DEFAULTS), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"rel-{CHART} 80" in script and f"rel-{CHART} 443" in script


# The restore script runs in a kubectl image; here a stand-in kubectl records what it is asked
# to create and answers like the API server, so the script's own decisions are what is tested.
FAKE_KUBECTL = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -f) cat "$2" > "$RECORD"; shift ;;
    --namespace) printf '%s' "$2" > "$RECORD.namespace"; shift ;;
  esac
  shift
done
printf '%s' "$KUBECTL_OUT"
printf '%s' "$KUBECTL_ERR" >&2
exit "$KUBECTL_RC"
"""

LACONIC_SO_BACKUP = """apiVersion: v1
items:
- apiVersion: v1
  data:
    value: c2VjcmV0
  kind: Secret
  metadata:
    creationTimestamp: "2026-04-01T10:00:00Z"
    labels:
      manager: caddy
    name: caddy.ingress--certificates.example
    namespace: caddy-system
    resourceVersion: "1234"
    uid: 6f1c2a34-0000-4000-8000-000000000001
  type: Opaque
kind: List
metadata:
  resourceVersion: ""
"""


def run_restore(
    tmp_path: Path, backup: str | None, rc: int = 0, err: str = ""
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    backup_file = tmp_path / "caddy-secrets.yaml"
    if backup is not None:
        backup_file.write_text(backup)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BACKUP_FILE": str(backup_file),
        "POD_NAMESPACE": "edge",
        "RECORD": str(tmp_path / "created.yaml"),
        "KUBECTL_RC": str(rc),
        "KUBECTL_OUT": "secret/caddy.ingress--certificates.example created\n" if rc == 0 else "",
        "KUBECTL_ERR": err,
    }
    script = CHARTS / CHART / "files" / "cert-restore.sh"
    return subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, env=env, check=False, timeout=30
    )


@pytest.mark.unit
def test_restore_recreates_a_laconic_so_backup_in_the_pods_namespace(tmp_path: Path) -> None:
    done = run_restore(tmp_path, LACONIC_SO_BACKUP)
    assert done.returncode == 0, done.stderr
    created = yaml.safe_load((tmp_path / "created.yaml").read_text())
    metadata = created["items"][0]["metadata"]
    assert metadata == {
        "labels": {"manager": "caddy"},
        "name": "caddy.ingress--certificates.example",
    }
    assert created["items"][0]["data"] == {"value": "c2VjcmV0"}
    assert not created.get("metadata")  # the List's resourceVersion is gone too
    assert (tmp_path / "created.yaml.namespace").read_text() == "edge"


@pytest.mark.unit
def test_restore_keeps_secrets_that_already_exist(tmp_path: Path) -> None:
    err = (
        "Error from server (AlreadyExists): "
        'secrets "caddy.ingress--certificates.example" already exists\n'
    )
    done = run_restore(tmp_path, LACONIC_SO_BACKUP, rc=1, err=err)
    assert done.returncode == 0, done.stderr
    assert "already exist" in done.stdout


@pytest.mark.unit
def test_restore_fails_loudly_on_any_other_error(tmp_path: Path) -> None:
    err = 'Error from server (Forbidden): secrets is forbidden: User "x" cannot create resource\n'
    done = run_restore(tmp_path, LACONIC_SO_BACKUP, rc=1, err=err)
    assert done.returncode == 1
    assert "Forbidden" in done.stderr and "fix or remove the file" in done.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "backup", [None, "apiVersion: v1\nitems: []\nkind: List\n"], ids=["missing", "empty"]
)
def test_restore_without_a_backup_starts_clean(tmp_path: Path, backup: str | None) -> None:
    done = run_restore(tmp_path, backup)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "created.yaml").exists()
