"""The caddy-ingress chart's security and availability rules: rendered with real Helm 4 and
Helm 3 over every scenario, and admitted (or refused) by the API server's own Pod Security
admission in namespaces that enforce `restricted` or `baseline`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.charts_support import (
    NAMESPACE,
    Doc,
    Scenario,
    all_scenarios,
    ci_by_name,
    enforce_pod_security,
    helm4,
    of_kind,
    one,
    pod_spec,
    pods_admitted,
    render,
    render_error,
    uninstall,
    workload,
)

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI
    from tests.harness.kubelet import Kubelet

CHART = "caddy-ingress"
FULLNAME = f"rel-{CHART}"
# Its own release name: cluster-scoped objects never meet those of other modules' installs.
RELEASE = "sec"
DEFAULTS = Scenario(CHART, ())
SCENARIOS = all_scenarios(CHART)
CI = ci_by_name(CHART)
# The restore and backup containers may run as root (documented, certBackup.securityContext)
# only because they write a host folder the kubelet creates as root.
HOST_FOLDER_WRITERS = {"cert-restore", "cert-backup"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}
# The controller's security context before this chart version: root, privilege escalation,
# NET_BIND_SERVICE added, no seccomp profile (host ports off: they are not what is tested).
ROOT_CONTROLLER = (
    "kind.enabled=false",
    "podSecurityContext=null",
    "securityContext.runAsNonRoot=null",
    "securityContext.readOnlyRootFilesystem=null",
    "securityContext.seccompProfile=null",
    "securityContext.runAsUser=0",
    "securityContext.runAsGroup=0",
    "securityContext.allowPrivilegeEscalation=true",
    "securityContext.capabilities.add[0]=NET_BIND_SERVICE",
)

pytestmark = pytest.mark.helm  # the admission tests install with Helm 4 too


def pod_specs(docs: list[Doc]) -> Iterator[Doc]:
    """The spec of the Deployment's pod template and of the `helm test` pod."""
    for doc in docs:
        if doc["kind"] == "Pod":
            yield doc["spec"]
        elif doc["kind"] == "Deployment":
            yield doc["spec"]["template"]["spec"]


def effective(pod: Doc, container: Doc, field: str) -> Any:
    """A security field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext") or {}
    if field in own:
        return own[field]
    return (pod.get("securityContext") or {}).get(field)


def replicas(docs: list[Doc]) -> int:
    return int(workload(docs)["spec"]["replicas"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- rendering: every scenario, both helm majors ------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_container_meets_the_restricted_container_rules(
    helm_bin: str, scenario: Scenario
) -> None:
    docs = render(helm_bin, scenario)
    checked = 0
    for pod in pod_specs(docs):
        host_path = any("hostPath" in v for v in pod.get("volumes", []))
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name, own = container["name"], container.get("securityContext") or {}
            assert own.get("allowPrivilegeEscalation") is False, name
            # drop ALL and add nothing (the controller states `add: []` for the takeover)
            assert own.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not own["capabilities"].get("add"), name
            assert own.get("privileged") in (None, False), name
            assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}, name
            if name in HOST_FOLDER_WRITERS and host_path:
                continue
            assert effective(pod, container, "runAsNonRoot") is True, name
            assert effective(pod, container, "runAsUser") not in (0, None), name
            checked += 1
    assert checked >= 2  # the controller and the test pod at least
    assert pod_spec(docs)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_controller_binds_its_ports_without_any_capability(
    helm_bin: str, scenario: Scenario
) -> None:
    # The controller hard-codes :80 and :443; a user without capabilities may bind them only
    # where the pod's network namespace makes ports from 80 up unprivileged.
    docs = render(helm_bin, scenario)
    pod = pod_spec(docs)
    controller = pod["containers"][0]
    assert not controller["securityContext"]["capabilities"].get("add")
    lowest = min(p["containerPort"] for p in controller["ports"])
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= lowest
    assert controller["securityContext"]["readOnlyRootFilesystem"] is True
    # Everything the controller writes is an emptyDir the fsGroup makes writable.
    mounts = {m["mountPath"]: m["name"] for m in controller["volumeMounts"]}
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for path in ("/data", "/config", "/tmp", "/etc/caddy/certs"):
        assert mounts.get(path) in empty, path
    env = {e["name"]: e.get("value") for e in controller["env"]}
    assert (env["XDG_DATA_HOME"], env["XDG_CONFIG_HOME"]) == ("/data", "/config")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_no_secret_or_lease_is_writable_cluster_wide(helm_bin: str, scenario: Scenario) -> None:
    docs = render(helm_bin, scenario)
    for role in of_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            if {"secrets", "leases", "*"} & set(rule["resources"]):
                assert not WRITE_VERBS & set(rule["verbs"]), rule
    # The certificate store and its locks: writable in the release namespace only.
    fullname = workload(docs)["metadata"]["name"]
    store = one(docs, "Role", fullname)
    assert "namespace" not in store["metadata"]  # helm puts it in the release namespace
    granted = {(r, v) for rule in store["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("secrets", "create"), ("secrets", "update"), ("secrets", "delete")} <= granted
    assert {("leases", "create"), ("leases", "update"), ("leases", "delete")} <= granted
    binding = one(docs, "RoleBinding", fullname)
    assert binding["roleRef"]["name"] == fullname
    assert binding["subjects"][0]["name"] == pod_spec(docs)["serviceAccountName"]


def test_a_watched_namespace_keeps_tls_secret_reads_there(helm_bin: str) -> None:
    everywhere = render(helm_bin, DEFAULTS)
    reads = [r for r in one(everywhere, "ClusterRole")["rules"] if "secrets" in r["resources"]]
    assert reads == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]
    docs = render(helm_bin, DEFAULTS, "watchNamespace=web")
    assert not [r for r in one(docs, "ClusterRole")["rules"] if "secrets" in r["resources"]]
    role = one(docs, "Role", f"{FULLNAME}-tls-secrets")
    assert role["metadata"]["namespace"] == "web"
    assert role["rules"][0]["verbs"] == ["list", "watch"]
    binding = one(docs, "RoleBinding", f"{FULLNAME}-tls-secrets")
    assert binding["subjects"][0]["namespace"] == NAMESPACE


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_budget_and_spread_come_with_more_than_one_replica(
    helm_bin: str, scenario: Scenario
) -> None:
    docs = render(helm_bin, scenario)
    pod = pod_spec(docs)
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    budgets = of_kind(docs, "PodDisruptionBudget")
    if replicas(docs) > 1:
        assert len(budgets) == 1
        assert matches(budgets[0]["spec"]["selector"]["matchLabels"], labels)
        (spread,) = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # one node still runs them all
        assert matches(spread["labelSelector"]["matchLabels"], labels)
        anti = pod["affinity"]["podAntiAffinity"]
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
        assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    else:
        # With one pod a budget would block every node drain.
        assert budgets == []
        assert "topologySpreadConstraints" not in pod
        assert "podAntiAffinity" not in pod.get("affinity", {})


def test_budget_and_spread_can_be_set_or_switched_off(helm_bin: str) -> None:
    two = ("kind.enabled=false", "replicaCount=2")
    assert not of_kind(
        render(helm_bin, DEFAULTS, *two, "podDisruptionBudget.enabled=false"), "PodDisruptionBudget"
    )
    forced = one(
        render(helm_bin, DEFAULTS, "podDisruptionBudget.enabled=true"), "PodDisruptionBudget"
    )
    assert forced["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": forced["spec"]["selector"]["matchLabels"]},
    }
    pct = one(
        render(helm_bin, DEFAULTS, *two, "podDisruptionBudget.maxUnavailable=50%"),
        "PodDisruptionBudget",
    )
    assert pct["spec"]["maxUnavailable"] == "50%" and "minAvailable" not in pct["spec"]
    own = pod_spec(
        render(
            helm_bin,
            DEFAULTS,
            *two,
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=edge",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        )
    )
    assert list(own["affinity"]) == ["nodeAffinity"]  # the operator's rules replace the default
    assert "topologySpreadConstraints" in own
    off = pod_spec(render(helm_bin, DEFAULTS, *two, "spreadAcrossNodes=false"))
    assert "affinity" not in off and "topologySpreadConstraints" not in off


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_metrics_are_scrapable_through_a_cluster_only_service(
    helm_bin: str, scenario: Scenario
) -> None:
    docs = render(helm_bin, scenario)
    controller = pod_spec(docs)["containers"][0]
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    fullname = workload(docs)["metadata"]["name"]
    service = one(docs, "Service", f"{fullname}-metrics")
    assert service["spec"]["type"] == "ClusterIP"  # never a node port or a public address
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    target = next(p for p in controller["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == 9765
    assert matches(service["spec"]["selector"], labels)
    # The main Service carries traffic only.
    main = one(docs, "Service", fullname)
    assert {p["name"] for p in main["spec"]["ports"]} == {"http", "https"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_controller_is_pointed_at_its_configmap_by_bare_name(
    helm_bin: str, scenario: Scenario
) -> None:
    # v0.2.1 compares each ConfigMap's name in its own namespace with -config-map: a
    # `<namespace>/<name>` value never matches, and metrics (like the ACME settings) stay off.
    docs = render(helm_bin, scenario)
    args = pod_spec(docs)["containers"][0]["args"]
    (name,) = [a.split("=", 1)[1] for a in args if a.startswith("-config-map=")]
    config = one(docs, "ConfigMap", name)
    assert "namespace" not in config["metadata"]  # the release namespace, the pod's own
    assert config["data"]["metrics"] == "true"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_prometheus_objects_only_when_asked(helm_bin: str, scenario: Scenario) -> None:
    docs = render(helm_bin, scenario)
    assert not of_kind(docs, "ServiceMonitor") and not of_kind(docs, "PodMonitor")
    annotations = workload(docs)["spec"]["template"]["metadata"]["annotations"]
    asked = scenario.values().get("monitoring", {}).get("podAnnotations", False)
    assert ("prometheus.io/scrape" in annotations) == asked


def test_service_and_pod_monitors_point_at_the_metrics_endpoint(helm_bin: str) -> None:
    docs = render(
        helm_bin,
        DEFAULTS,
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.serviceMonitor.labels.release=prom",
        "monitoring.podMonitor.enabled=true",
        "monitoring.podAnnotations=true",
    )
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not matches(
        monitor["spec"]["selector"]["matchLabels"],
        one(docs, "Service", FULLNAME)["metadata"]["labels"],
    )
    assert monitor["spec"]["endpoints"][0] | {"interval": None} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": None,
    }
    pod_monitor = one(docs, "PodMonitor")
    assert matches(pod_monitor["spec"]["selector"]["matchLabels"], labels)
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("health", "/metrics")
    annotations = workload(docs)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9765"
    assert annotations["prometheus.io/path"] == "/metrics"
    # Scraping a controller that serves no metrics is refused, not silently empty.
    error = render_error(helm_bin, DEFAULTS, "metrics=false", "monitoring.podMonitor.enabled=true")
    assert "metrics: true" in error


def test_readiness_and_liveness_are_distinct_probes(helm_bin: str) -> None:
    controller = pod_spec(render(helm_bin, DEFAULTS))["containers"][0]
    ready, live = controller["readinessProbe"], controller["livenessProbe"]
    assert ready != live
    for probe in (ready, live, controller["startupProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    # Readiness reacts in seconds; liveness restarts only a controller stuck for minutes.
    ready_window = ready["periodSeconds"] * ready["failureThreshold"]
    live_window = live["periodSeconds"] * live["failureThreshold"]
    assert ready_window <= 15 and live_window >= 60
    assert live["timeoutSeconds"] > ready["timeoutSeconds"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_container_has_requests_and_a_memory_limit(helm_bin: str, scenario: Scenario) -> None:
    for pod in pod_specs(render(helm_bin, scenario)):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


# --- Pod Security admission of the real API server ----------------------------------------------


def violations(reason: str) -> set[str]:
    """The Pod Security checks a refusal names: `violates PodSecurity "L": a (..), b (..)`."""
    assert "violates PodSecurity" in reason, reason
    listed = reason.split('": ', 1)[1].rstrip(")")
    return {part.split(" (", 1)[0] for part in listed.split("), ")}


def install_and_admit(api: KubeAPI, namespace: str, scenario: Scenario, *sets: str) -> list[str]:
    """Installs the chart with Helm 4 as an operator would; returns the reasons the API refused
    the pods of its ReplicaSets (empty when every pod was admitted)."""
    done = subprocess.run(
        [helm4(), "upgrade", "--install", RELEASE, str(scenario.chart_dir),
         "--namespace", namespace, *scenario.values_args, *(a for s in sets for a in ("--set", s))],
        env=api.env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return pods_admitted(api, namespace)


def ready_replicas(api: KubeAPI, namespace: str) -> int:
    deployments = api.harness.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    return sum(d.get("status", {}).get("readyReplicas", 0) for d in deployments)


def remove(api: KubeAPI, namespace: str) -> None:
    uninstall(helm4(), api, namespace, release=RELEASE)


NO_HOST_ACCESS = [CI["cluster-values"], CI["loadbalancer-values"], CI["ha-metrics-values"]]


@pytest.mark.parametrize("scenario", NO_HOST_ACCESS, ids=lambda s: s.id)
def test_restricted_namespace_admits_every_pod_without_host_access(
    kube_api: KubeAPI, namespace: str, kubelet: Kubelet | None, scenario: Scenario
) -> None:
    enforce_pod_security(kube_api, namespace, "restricted")
    try:
        assert install_and_admit(kube_api, namespace, scenario) == []
        pods = kube_api.harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        wanted = replicas(render(helm4(), scenario))
        assert len(pods) == wanted
        # And they run: on real kind as the chart's non-root user, binding :80/:443 through the
        # sysctl, and ready once Caddy loaded the ConfigMap (no Ingress exists here).
        deadline = time.monotonic() + 300
        while ready_replicas(kube_api, namespace) < wanted:
            assert time.monotonic() < deadline, f"{namespace}: pods not ready in 300 s"
            time.sleep(1)
        # The `helm test` pod is admitted too (a server-side dry run goes through admission).
        test_pod = one(render(helm4(), scenario, release=RELEASE, namespace=namespace), "Pod")
        kube_api.harness.create(f"/api/v1/namespaces/{namespace}/pods?dryRun=All", test_pod)
    finally:
        remove(kube_api, namespace)


@pytest.mark.parametrize(
    ("scenario", "level", "broken"),
    [
        # Host ports are a `baseline` rule: kind mode needs a namespace that allows them
        # (`privileged`), and breaks no other rule of `restricted`.
        (CI["kind-values"], "baseline", {"hostPort"}),
        (CI["kind-values"], "restricted", {"hostPort"}),
        # The certificate backup adds its host folder (`restricted` names it among the volume
        # types it refuses) and its root, capability-less, writers.
        (CI["cert-backup-values"], "baseline", {"hostPort", "hostPath volumes"}),
        (
            CI["cert-backup-values"],
            "restricted",
            {"hostPort", "restricted volume types", "runAsNonRoot != true", "runAsUser=0"},
        ),
    ],
    ids=lambda v: v.id if isinstance(v, Scenario) else (v if isinstance(v, str) else None),
)
def test_host_access_breaks_only_the_documented_rules(
    kube_api: KubeAPI, namespace: str, scenario: Scenario, level: str, broken: set[str]
) -> None:
    enforce_pod_security(kube_api, namespace, level)
    try:
        refused = install_and_admit(kube_api, namespace, scenario)
        assert len(refused) == 1, refused
        assert violations(refused[0]) == broken
        assert f'"{level}:' in refused[0]
    finally:
        remove(kube_api, namespace)


def test_a_root_controller_is_refused_in_a_restricted_namespace(
    kube_api: KubeAPI, namespace: str
) -> None:
    # The negative control: the same install with the controller as it ran before (root, an
    # added capability, privilege escalation, no seccomp profile) never gets a pod.
    enforce_pod_security(kube_api, namespace, "restricted")
    try:
        refused = install_and_admit(kube_api, namespace, DEFAULTS, *ROOT_CONTROLLER)
        assert len(refused) == 1, refused
        # (`restricted` allows adding NET_BIND_SERVICE; it never made root a non-root user.)
        assert violations(refused[0]) == {
            "allowPrivilegeEscalation != false",
            "runAsNonRoot != true",
            "runAsUser=0",
            "seccompProfile",
        }
        assert kube_api.harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
    finally:
        remove(kube_api, namespace)
