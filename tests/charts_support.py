"""Renders this repository's charts with the real helm binaries, for the chart and overlay tests.

Every scenario (a chart plus the values files an operator or CI would pass) is rendered at most
once per helm binary per test session: `render` keeps its results, so the many assertions on one
scenario cost one `helm template`. Rendered documents are shared; tests must not modify them.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import yaml

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI

REPO = Path(__file__).resolve().parent.parent
CHARTS = REPO / "charts"
VALUES = REPO / "values"
CHART_NAMES = ("caddy-ingress", "agave")

# kind v0.33.0's default node image runs Kubernetes v1.37.0.
KUBE_VERSION = "1.37.0"

RELEASE = "rel"
NAMESPACE = "apps"

# The first line of a ci scenario that `ct install` cannot run on kind (the workflow drops it).
CT_INSTALL_SKIP = "# ct-install: skip"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """A chart with the values files of one case, in the order helm applies them."""

    chart: str
    files: tuple[Path, ...]

    @property
    def id(self) -> str:
        if not self.files:
            return f"{self.chart}/defaults"
        return "+".join(str(f.relative_to(REPO).with_suffix("")) for f in self.files)

    @property
    def chart_dir(self) -> Path:
        return CHARTS / self.chart

    @property
    def values_args(self) -> list[str]:
        return [arg for f in self.files for arg in ("--values", str(f))]

    def values(self) -> dict[str, Any]:
        """The merged top level of the scenario's files (later files win, one level deep)."""
        merged: dict[str, Any] = {}
        for f in self.files:
            merged.update(yaml.safe_load(f.read_text()) or {})
        return merged

    @property
    def ct_installable(self) -> bool:
        return not any(f.read_text().startswith(CT_INSTALL_SKIP) for f in self.files)


def ci_scenarios(chart: str) -> list[Scenario]:
    """One scenario per `ci/*-values.yaml` of the chart, as ct lint and ct install take them."""
    return [Scenario(chart, (f,)) for f in sorted((CHARTS / chart / "ci").glob("*-values.yaml"))]


# Overlays that only make sense on top of another overlay of the same chart.
STACKED_OVERLAYS = {
    "caddy-ingress": [
        ("biscayne.yaml", "laconic-so-adopt.yaml"),
        ("kind.yaml", "laconic-so-adopt.yaml"),
    ],
    "agave": [],
}


def overlay_scenarios(chart: str) -> list[Scenario]:
    """Each overlay of values/<chart>/ on its own, then the documented stacks."""
    folder = VALUES / chart
    single = [Scenario(chart, (f,)) for f in sorted(folder.glob("*.yaml"))]
    stacked = [
        Scenario(chart, tuple(folder / n for n in names)) for names in STACKED_OVERLAYS[chart]
    ]
    return single + stacked


def ci_by_name(chart: str) -> dict[str, Scenario]:
    """The chart's ci scenarios by file stem (`rpc-values`, `kind-values`, ...)."""
    return {s.files[0].stem: s for s in ci_scenarios(chart)}


def chart_scenarios(chart: str) -> list[Scenario]:
    """The chart's defaults and its ci scenarios."""
    return [Scenario(chart, ()), *ci_scenarios(chart)]


def all_scenarios(chart: str) -> list[Scenario]:
    """The chart's defaults, ci scenarios and environment overlays."""
    return [*chart_scenarios(chart), *overlay_scenarios(chart)]


class RenderError(Exception):
    """helm refused the values; the message is helm's stderr."""


@functools.cache
def _template(helm: str, chart: str, args: tuple[str, ...], release: str, namespace: str) -> str:
    done = subprocess.run(
        [helm, "template", release, str(CHARTS / chart), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RenderError(done.stderr)
    return done.stdout


def render(
    helm: str,
    scenario: Scenario,
    *sets: str,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[Doc]:
    """The documents `helm template` renders for the scenario plus `--set` pairs."""
    args = (*scenario.values_args, *(a for s in sets for a in ("--set", s)))
    text = _template(helm, scenario.chart, args, release, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(helm: str, scenario: Scenario, *sets: str) -> str:
    """helm's error for a scenario that must be refused; fails if it renders."""
    try:
        render(helm, scenario, *sets)
    except RenderError as refused:
        return str(refused)
    raise AssertionError(f"helm rendered {scenario.id} with {sets} although it must refuse it")


def lint(helm: str, scenario: Scenario) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict` of the scenario."""
    return subprocess.run(
        [helm, "lint", "--strict", str(scenario.chart_dir), *scenario.values_args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@functools.cache
def _validate(doc_json: str) -> str | None:
    try:
        kubernetes_validate.validate(json.loads(doc_json), KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as invalid:
        return str(invalid).splitlines()[0]
    return None


def schema_errors(docs: list[Doc]) -> list[str]:
    """Strict OpenAPI validation of every document against Kubernetes KUBE_VERSION."""
    errors = []
    for doc in docs:
        error = _validate(json.dumps(doc, sort_keys=True))
        if error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error}")
    return errors


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(docs: list[Doc]) -> Doc:
    """The chart's Deployment (each chart has exactly one)."""
    return one(docs, "Deployment")


def pod_spec(docs: list[Doc]) -> Doc:
    return workload(docs)["spec"]["template"]["spec"]


def pod_annotations(docs: list[Doc]) -> dict[str, str]:
    """The annotations of the workload's pod template (what rolls the pod when it changes)."""
    return workload(docs)["spec"]["template"]["metadata"]["annotations"]


def containers(docs: list[Doc]) -> Iterator[Doc]:
    """Every container and init container of every pod template and pod in the documents."""
    for doc in docs:
        if doc["kind"] == "Pod":
            spec = doc["spec"]
        elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            spec = doc["spec"]["template"]["spec"]
        else:
            continue
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def image_tag(image: str) -> str:
    """The tag of an image reference ("" when it has none)."""
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


def readme_commands(readme: Path, *, published: bool = False) -> list[list[str]]:
    """The `helm upgrade --install` lines of a README's shell blocks, as argv lists: those of
    the chart in this checkout, or (`published`) those of the chart in the OCI registry."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", readme.read_text(), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("helm upgrade --install "):
                argv = shlex.split(line)
                if argv[4].startswith("oci://") == published:
                    commands.append(argv)
    return commands


def helm4() -> str:
    """The provisioned Helm 4, which installs server-side as operators' helm now does."""
    helm = shutil.which("helm")
    assert helm is not None
    return helm


def install(
    helm: str, scenario: Scenario, api: KubeAPI, namespace: str, release: str = RELEASE
) -> subprocess.CompletedProcess[str]:
    """`helm upgrade --install` of the scenario into the API, as an operator types it."""
    return subprocess.run(
        [
            helm,
            "upgrade",
            "--install",
            release,
            str(scenario.chart_dir),
            "--namespace",
            namespace,
            *scenario.values_args,
        ],
        env=api.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def uninstall(helm: str, api: KubeAPI, namespace: str, release: str = RELEASE) -> None:
    subprocess.run(
        [helm, "uninstall", release, "--namespace", namespace],
        env=api.env,
        capture_output=True,
        check=False,
        timeout=300,
    )


def pods_admitted(api: KubeAPI, namespace: str, timeout: float = 60.0) -> list[str]:
    """Waits until every ReplicaSet in the namespace has made its pods; returns the reasons of
    ReplicaSets whose pods the API refused (admission runs on pods, not on Deployments)."""
    deadline = time.monotonic() + timeout
    while True:
        sets = api.harness.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
        refused = [
            f"{rs['metadata']['name']}: {c.get('message', c.get('reason'))}"
            for rs in sets
            for c in rs.get("status", {}).get("conditions", [])
            if c["type"] == "ReplicaFailure" and c["status"] == "True"
        ]
        made = all(rs.get("status", {}).get("replicas", 0) >= rs["spec"]["replicas"] for rs in sets)
        if refused or (sets and made):
            return refused
        if time.monotonic() > deadline:
            return [f"no pods made within {timeout:.0f} s"]
        time.sleep(0.2)


def enforce_pod_security(api: KubeAPI, namespace: str, level: str = "restricted") -> None:
    """Labels the namespace so Pod Security admission enforces `level` (latest version) on its
    pods; admission then refuses the pods, never the Deployment."""
    api.harness.patch(
        f"/api/v1/namespaces/{namespace}",
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": level,
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )


def ensure_runtime_class(api: KubeAPI, name: str = "high-memlock") -> None:
    """The RuntimeClass laconic-so's kind clusters define (the driver creates it too); pods
    naming a RuntimeClass that does not exist are refused."""
    path = "/apis/node.k8s.io/v1/runtimeclasses"
    if api.harness.get_or_none(f"{path}/{name}") is None:
        api.harness.create(
            path,
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": name},
                "handler": name,
            },
        )
