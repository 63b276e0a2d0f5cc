"""The agave chart's security defaults: Pod Security `restricted` on every container (the
documented extras aside: the node's seccomp Unconfined for agave 4's io_uring in every mode, and
root with capabilities in rpc/validator), per-mode resources, and the metrics password only ever
in a Secret. Rendered with real Helm 4 and Helm 3; admission checked by a real kube-apiserver's
built-in Pod Security admission (the stand-in API, or real kind)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.charts_support import (
    CHARTS,
    Doc,
    Scenario,
    all_scenarios,
    ci_by_name,
    containers,
    enforce_pod_security,
    helm4,
    install,
    of_kind,
    pod_spec,
    pods_admitted,
    render,
    render_error,
    uninstall,
)
from tests.harness import realkind

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI
    from tests.harness.kubelet import Kubelet

CHART = "agave"
DEFAULTS = Scenario(CHART, ())
SCENARIOS = all_scenarios(CHART)
CI = ci_by_name(CHART)
REAL_NODE = ("rpc", "validator")
# The capabilities the chart adds in rpc/validator mode (IPC_LOCK, SYS_NICE) and with xdp.
DOCUMENTED_CAPS = {"IPC_LOCK", "SYS_NICE", "NET_ADMIN", "NET_RAW"}
# Volume types Pod Security `restricted` allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
# Enough of a real keypair flag to satisfy the chart in rpc/validator mode.
RPC = ("mode=rpc", "identity.existingSecret=id")
VALIDATOR = ("mode=validator", "identity.existingSecret=id", "vote.existingSecret=vote")
METRICS = "host=https://metrics.example.org:8086,db=mainnet,u=writer,p=s3cr3t-Metr1cs-pw"
# The node container's one gap from `restricted` by default: agave 4 needs io_uring.
IO_URING = "agave: seccomp {'type': 'Unconfined'}"

pytestmark = pytest.mark.helm


def mode(scenario: Scenario) -> str:
    return scenario.values().get("mode", "test")


def uses_host_paths(scenario: Scenario) -> bool:
    volumes = scenario.values().get("volumes", {})
    return any(v.get("type") == "hostPath" for v in volumes.values())


def without_host_access(scenario: Scenario) -> bool:
    """Test mode with no host network, host ports or host folders: a pod `restricted` admits."""
    values = scenario.values()
    return (
        mode(scenario) == "test"
        and not values.get("hostNetwork")
        and not values.get("hostPorts")
        and not uses_host_paths(scenario)
    )


RESTRICTED_SCENARIOS = [s for s in SCENARIOS if without_host_access(s)]


def node(docs: list[Doc]) -> Doc:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "agave")


def restricted_gaps(container: Doc) -> list[str]:
    """What keeps a container from the Pod Security `restricted` container rules, with the user
    stated on the container itself."""
    context = container.get("securityContext", {})
    gaps = []
    if context.get("runAsNonRoot") is not True:
        gaps.append("runAsNonRoot is not true")
    for key in ("runAsUser", "runAsGroup"):
        if not isinstance(context.get(key), int) or context[key] == 0:
            gaps.append(f"{key} is not a non-root number: {context.get(key)!r}")
    if context.get("allowPrivilegeEscalation") is not False:
        gaps.append("privilege escalation is not forbidden")
    if context.get("privileged"):
        gaps.append("privileged")
    capabilities = context.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"]:
        gaps.append(f"drops {capabilities.get('drop')!r}, not ALL")
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        gaps.append(f"adds {capabilities['add']}")
    if context.get("seccompProfile") != {"type": "RuntimeDefault"}:
        gaps.append(f"seccomp {context.get('seccompProfile')!r}")
    return gaps


def pod_restricted_gaps(spec: Doc) -> list[str]:
    """The pod-level `restricted` (and `baseline`) rules a pod spec breaks."""
    gaps = [f"{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            gaps.append(f"volume {volume['name']} is {sorted(kinds)}")
    context = spec.get("securityContext", {})
    if context.get("runAsUser") == 0 or context.get("runAsNonRoot") is not True:
        gaps.append(f"pod user {context}")
    if context.get("sysctls"):
        gaps.append("pod sysctls")
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        gaps += [f"{container['name']}: {gap}" for gap in restricted_gaps(container)]
        gaps += [
            f"{container['name']}: host port {port['hostPort']}"
            for port in container.get("ports", [])
            if port.get("hostPort")
        ]
    return gaps


def pods(docs: list[Doc]) -> list[Doc]:
    """The node's pod spec and the `helm test` pod's."""
    return [pod_spec(docs), *(d["spec"] for d in of_kind(docs, "Pod"))]


# --- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_container_states_a_restricted_context_or_a_documented_extra(
    helm_bin: str, scenario: Scenario
) -> None:
    docs = render(helm_bin, scenario)
    values = scenario.values()
    checked = 0
    for container in containers(docs):
        context = container["securityContext"]
        checked += 1
        if container["name"] == "sysctl":
            # sysctlInit.enabled: the one privileged container, before the node starts.
            assert values["sysctlInit"]["enabled"] is True
            assert context["privileged"] is True and context["runAsUser"] == 0
            continue
        gaps = restricted_gaps(container)
        if container["name"] != "agave":
            assert gaps == [], f"{container['name']}: {gaps}"
            continue
        # The node's documented extras: seccomp Unconfined in every mode (agave 4's io_uring),
        # root (rpc/validator, or host folders, or a user given in podSecurityContext) with the
        # mode's capabilities. Everything else stays: ALL dropped first, no escalation.
        assert context["seccompProfile"] == {"type": "Unconfined"}
        if gaps == [IO_URING.removeprefix("agave: ")]:
            continue
        root_expected = mode(scenario) in REAL_NODE or uses_host_paths(scenario)
        assert root_expected, f"agave runs as root in {scenario.id}: {gaps}"
        assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert set(context["capabilities"].get("add", [])) <= DOCUMENTED_CAPS
    assert checked >= 2  # the node and the helm test pod at least


@pytest.mark.parametrize("scenario", RESTRICTED_SCENARIOS, ids=lambda s: s.id)
def test_test_mode_pods_meet_restricted_but_for_io_uring(helm_bin: str, scenario: Scenario) -> None:
    """Only the node's seccomp stands between a test-mode pod and `restricted`; with
    `seccompProfile: RuntimeDefault` (images before agave 4) the pod is wholly restricted."""
    docs = render(helm_bin, scenario)
    node_pod, *test_pods = pods(docs)
    assert pod_restricted_gaps(node_pod) == [IO_URING]
    for spec in test_pods:
        assert pod_restricted_gaps(spec) == []
    assert (
        pod_restricted_gaps(pod_spec(render(helm_bin, scenario, "seccompProfile=RuntimeDefault")))
        == []
    )
    context = pod_spec(docs)["securityContext"]
    # Volumes the kubelet can hand over: fsGroup makes emptyDir and claims the node's.
    assert (
        context["fsGroup"] == context["runAsGroup"] == node(docs)["securityContext"]["runAsGroup"]
    )


def test_restricted_scenarios_cover_defaults_ci_and_the_kind_overlay() -> None:
    ids = {s.id for s in RESTRICTED_SCENARIOS}
    assert {"agave/defaults", "charts/agave/ci/test-values", "values/agave/kind-test"} <= ids
    assert "charts/agave/ci/test-hostpath-values" not in ids


def test_host_folders_run_the_test_node_as_root_unless_told_otherwise(helm_bin: str) -> None:
    """The kubelet creates hostPath folders root-owned and fsGroup skips them: `auto` picks
    root; `never` keeps the uid for folders the operator owns by it."""
    scenario = CI["test-hostpath-values"]
    assert node(render(helm_bin, scenario))["securityContext"]["runAsUser"] == 0
    kept = render(
        helm_bin,
        scenario,
        "nodeUser.root=never",
        "nodeUser.uid=2000",
        "seccompProfile=RuntimeDefault",
    )
    assert restricted_gaps(node(kept)) == []
    assert node(kept)["securityContext"]["runAsUser"] == 2000
    gaps = pod_restricted_gaps(pod_spec(kept))
    assert gaps and all("hostPath" in gap for gap in gaps)  # only the folders themselves


def test_real_modes_can_run_as_the_uid_and_test_mode_as_root(helm_bin: str) -> None:
    rpc = node(render(helm_bin, DEFAULTS, *RPC, "nodeUser.root=never"))["securityContext"]
    assert rpc["runAsUser"] == 10001 and rpc["runAsNonRoot"] is True
    assert rpc["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK", "SYS_NICE"]}
    test = node(render(helm_bin, DEFAULTS, "nodeUser.root=always"))["securityContext"]
    assert test["runAsUser"] == 0 and test["runAsNonRoot"] is False


def test_a_user_in_pod_security_context_wins_on_pod_and_container(helm_bin: str) -> None:
    # As laconic-so imports give it: the compose file's user and the keypair's group.
    docs = render(
        helm_bin, DEFAULTS, *RPC, "podSecurityContext.runAsUser=1000",
        "podSecurityContext.fsGroup=1000",
    )  # fmt: skip
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsUser"] == 1000 and pod["fsGroup"] == 1000 and pod["runAsNonRoot"] is True
    assert "runAsGroup" not in pod  # the image's group for that user, as laconic-so ran it
    container = node(docs)["securityContext"]
    assert container["runAsUser"] == 1000 and "runAsGroup" not in container


def test_privileged_node_drops_the_no_escalation_flag_it_cannot_have(helm_bin: str) -> None:
    context = node(render(helm_bin, DEFAULTS, *RPC, "privileged=true"))["securityContext"]
    assert context["privileged"] is True and context["allowPrivilegeEscalation"] is True


def test_unknown_node_user_mode_is_refused(helm_bin: str) -> None:
    assert "nodeUser" in render_error(helm_bin, DEFAULTS, "nodeUser.root=sometimes")
    assert "nodeUser" in render_error(helm_bin, DEFAULTS, "nodeUser.uid=0")


# --- resources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ((), {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}),
        (RPC, {"requests": {"cpu": "16", "memory": "400Gi"}}),
        (VALIDATOR, {"requests": {"cpu": "12", "memory": "200Gi"}}),
    ],
    ids=["test", "rpc", "validator"],
)
def test_each_mode_has_default_resources(
    helm_bin: str, sets: tuple[str, ...], expected: dict[str, Any]
) -> None:
    assert node(render(helm_bin, DEFAULTS, *sets))["resources"] == expected


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_resources_are_the_scenarios_or_the_modes_and_never_limit_cpu(
    helm_bin: str, scenario: Scenario
) -> None:
    resources = node(render(helm_bin, scenario))["resources"]
    given = scenario.values().get("resources")
    if given:
        assert resources == given
    else:
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert "cpu" not in resources.get("limits", {})
        if mode(scenario) in REAL_NODE:
            assert "limits" not in resources


def test_set_resources_replace_the_mode_default_whole(helm_bin: str) -> None:
    resources = node(render(helm_bin, DEFAULTS, *RPC, "resources.requests.cpu=2"))["resources"]
    assert resources == {"requests": {"cpu": 2}}


def test_a_typo_in_resources_is_refused(helm_bin: str) -> None:
    assert "resources" in render_error(helm_bin, DEFAULTS, "resources.request.cpu=2")


# --- the metrics password --------------------------------------------------------------------


def metrics_forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode(), "s3cr3t-Metr1cs-pw"]


def test_metrics_config_reaches_the_node_through_a_secret_key_ref_only(helm_bin: str) -> None:
    docs = render(helm_bin, DEFAULTS, f"metrics.config={METRICS.replace(',', chr(92) + ',')}")
    (variable,) = [e for e in node(docs)["env"] if e["name"] == "SOLANA_METRICS_CONFIG"]
    assert variable == {
        "name": "SOLANA_METRICS_CONFIG",
        "valueFrom": {"secretKeyRef": {"name": "rel-agave-metrics", "key": "config"}},
    }
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "rel-agave-metrics"]
    assert base64.b64decode(secret["data"]["config"]).decode() == METRICS
    for doc in docs:
        if doc is secret:
            continue
        text = json.dumps(doc)
        leaked = [form for form in metrics_forms(METRICS) if form in text]
        assert not leaked, f"metrics password in {doc['kind']} {doc['metadata']['name']}"
    assert of_kind(docs, "ConfigMap")  # the scripts ConfigMap was searched too


def test_metrics_from_an_existing_secret_enter_no_object(helm_bin: str) -> None:
    docs = render(helm_bin, CI["rpc-values"])
    (variable,) = [e for e in node(docs)["env"] if e["name"] == "SOLANA_METRICS_CONFIG"]
    assert variable["valueFrom"] == {"secretKeyRef": {"name": "agave-metrics", "key": "influxdb"}}
    assert "value" not in variable
    assert not of_kind(docs, "Secret")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_no_environment_variable_carries_a_plain_metrics_config(
    helm_bin: str, scenario: Scenario
) -> None:
    for container in containers(render(helm_bin, scenario)):
        for variable in container.get("env", []):
            if variable["name"] == "SOLANA_METRICS_CONFIG":
                assert "value" not in variable and "secretKeyRef" in variable["valueFrom"]


def test_without_metrics_there_is_no_metrics_variable(helm_bin: str) -> None:
    names = [e["name"] for e in node(render(helm_bin, DEFAULTS))["env"]]
    assert "SOLANA_METRICS_CONFIG" not in names


def test_a_plain_metrics_config_in_env_is_refused_with_the_fix(helm_bin: str) -> None:
    error = render_error(
        helm_bin, DEFAULTS, "env[0].name=SOLANA_METRICS_CONFIG", "env[0].value=host=x\\,p=pw"
    )
    assert "SOLANA_METRICS_CONFIG" in error and "metrics.existingSecret" in error
    assert "p=pw" not in error


def test_metrics_from_values_and_an_existing_secret_are_refused(helm_bin: str) -> None:
    error = render_error(helm_bin, DEFAULTS, "metrics.config=host=x", "metrics.existingSecret=m")
    assert "either metrics.existingSecret or metrics.config" in error


def test_metrics_config_in_values_is_warned_about_and_kept_out_of_notes() -> None:
    helm = shutil.which("helm")  # `--dry-run=client` renders NOTES without a cluster in Helm 4
    assert helm is not None
    done = subprocess.run(
        [helm, "install", "rel", str(CHARTS / CHART), "--dry-run=client", "-o", "json",
         "--set", f"metrics.config={METRICS.replace(',', chr(92) + ',')}"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    notes = json.loads(done.stdout)["info"]["notes"]
    assert "metrics.config stores the metrics password in the release record" in notes
    assert not [form for form in metrics_forms(METRICS) if form in notes]


# --- Pod Security admission ------------------------------------------------------------------


def helm_test_pod(scenario: Scenario, namespace: str) -> Doc:
    """The `helm test` pod the scenario renders, placed in `namespace`."""
    (pod,) = of_kind(render(helm4(), scenario, namespace=namespace), "Pod")
    return pod


@pytest.mark.parametrize(
    "scenario",
    [DEFAULTS, CI["test-values"], CI["test-pvc-values"], CI["test-metrics-values"]],
    ids=lambda s: s.id,
)
def test_restricted_namespace_admits_the_test_node_and_its_test_pod(
    kube_api: KubeAPI, namespace: str, scenario: Scenario, tmp_path: Path
) -> None:
    """With the node's seccomp at RuntimeDefault (an image without agave 4's io_uring, as the
    stand-in is), a test-mode release is admitted under `restricted`."""
    enforce_pod_security(kube_api, namespace)
    runtime_default = tmp_path / "seccomp-values.yaml"
    runtime_default.write_text("seccompProfile: RuntimeDefault\n")
    scenario = Scenario(CHART, (*scenario.files, runtime_default))
    done = install(helm4(), scenario, kube_api, namespace)
    try:
        assert done.returncode == 0, done.stderr
        assert pods_admitted(kube_api, namespace) == []
        made = kube_api.harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        assert len(made) == 1
        # The helm test pod passes the same admission (dry run: it is not left behind).
        kube_api.harness.create(
            f"/api/v1/namespaces/{namespace}/pods?dryRun=All", helm_test_pod(scenario, namespace)
        )
    finally:
        uninstall(helm4(), kube_api, namespace)


def test_restricted_namespace_refuses_a_root_node(
    kube_api: KubeAPI, namespace: str, tmp_path: Path
) -> None:
    """The negative control: the same chart with the node as root is refused by the same
    admission, so the test above can fail."""
    enforce_pod_security(kube_api, namespace)
    as_root = tmp_path / "root-values.yaml"
    as_root.write_text("nodeUser:\n  root: always\n")
    scenario = Scenario(CHART, (*CI["test-values"].files, as_root))
    done = install(helm4(), scenario, kube_api, namespace)
    try:
        assert done.returncode == 0, done.stderr  # a Deployment is admitted; its pods are not
        refused = pods_admitted(kube_api, namespace)
        assert len(refused) == 1, refused
        assert 'violates PodSecurity "restricted:latest"' in refused[0]
        assert "runAsNonRoot" in refused[0] or "runAsUser=0" in refused[0]
        assert kube_api.harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
    finally:
        uninstall(helm4(), kube_api, namespace)


def test_the_test_node_serves_as_its_own_uid_in_a_restricted_namespace(
    kube_api: KubeAPI, kubelet: Kubelet | None, namespace: str, tmp_path: Path
) -> None:
    """Admission is not enough: the non-root node must also write its ledger (the stand-in
    makes its admin socket there) and serve (`--wait` waits for readiness: getHealth "ok")."""
    enforce_pod_security(kube_api, namespace)
    images = realkind.test_images()
    node_repo, _, node_tag = images["agave"].rpartition(":")
    values = {
        "mode": "test",
        "image": {"repository": node_repo, "tag": node_tag},
        "tests": {"enabled": False},
        "seccompProfile": "RuntimeDefault",  # the stand-in needs no io_uring
        "volumes": {"ledger": {"type": "emptyDir"}},
        "probes": {"startup": {"periodSeconds": 2}, "readiness": {"periodSeconds": 2}},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm4(), *args, "--namespace", namespace],
            env=kube_api.env, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    done = helm(
        "upgrade", "--install", "rel", str(CHARTS / CHART), "--values", str(path),
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        if kube_api.real_kubelet:
            # The process really is uid 10001, and the ledger it wrote is its own.
            (pod,) = kube_api.harness.get(
                f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                "app.kubernetes.io/component%3Dnode"
            )["items"]
            kubectl = shutil.which("kubectl")
            assert kubectl is not None
            shown = subprocess.run(
                [kubectl, "exec", "--namespace", namespace, pod["metadata"]["name"], "-c",
                 "agave", "--", "sh", "-c", "id -u; stat -c %u /data/ledger/admin.rpc"],
                env=kube_api.env, capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.split() == ["10001", "10001"]
    finally:
        uninstall(helm4(), kube_api, namespace)
