"""The environment overlays under values/, and the README's install lines that use them.

The generic properties (valid Kubernetes objects, pinned images, Recreate, kept claims) are
asserted over the overlays by the chart tests; here each overlay must lint, and each
environment must hold together across the two releases.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.charts_support import (
    CHART_NAMES,
    REPO,
    VALUES,
    Scenario,
    ensure_runtime_class,
    lint,
    of_kind,
    one,
    overlay_scenarios,
    pod_spec,
    pods_admitted,
    readme_commands,
    render,
    schema_errors,
    uninstall,
)

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI

OVERLAYS = [s for chart in CHART_NAMES for s in overlay_scenarios(chart)]
# Each environment: the caddy-ingress overlay and the agave overlay deployed beside it.
ENVIRONMENTS = {
    "kind": ("kind.yaml", "kind-test.yaml"),
    "biscayne": ("biscayne.yaml", "biscayne-rpc.yaml"),
}
README_CHARTS = [REPO / "charts" / chart / "README.md" for chart in CHART_NAMES]


def overlay(chart: str, name: str) -> Scenario:
    return Scenario(chart, (VALUES / chart / name,))


@pytest.mark.helm
@pytest.mark.parametrize("scenario", OVERLAYS, ids=lambda s: s.id)
def test_overlay_lints_strictly(helm_bin: str, scenario: Scenario) -> None:
    done = lint(helm_bin, scenario)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.unit
def test_overlays_follow_the_yaml_rules_of_the_charts() -> None:
    files = sorted(str(f) for f in VALUES.rglob("*.yaml"))
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(REPO / "lintconf.yaml"), *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.helm
@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_agave_routes_through_the_class_caddy_creates(helm_bin: str, environment: str) -> None:
    caddy_file, agave_file = ENVIRONMENTS[environment]
    caddy = render(helm_bin, overlay("caddy-ingress", caddy_file), release="caddy-ingress")
    agave = render(helm_bin, overlay("agave", agave_file), release="agave")
    ingress_class = one(caddy, "IngressClass")["metadata"]["name"]
    ingresses = of_kind(agave, "Ingress")
    assert ingresses, f"{agave_file} routes nothing through the ingress"
    assert {i["spec"]["ingressClassName"] for i in ingresses} == {ingress_class}


@pytest.mark.helm
def test_biscayne_rpc_node_uses_the_hosts_network_disks_and_secret(helm_bin: str) -> None:
    scenario = overlay("agave", "biscayne-rpc.yaml")
    docs = render(helm_bin, scenario, release="agave")
    spec = pod_spec(docs)
    assert spec["hostNetwork"] is True
    node = spec["containers"][0]
    assert node["command"] == ["agave-validator"]
    assert "--no-voting" in node["args"]
    data_volumes = [v for v in spec["volumes"] if v["name"] in scenario.values()["volumes"]]
    assert len(data_volumes) == 5
    for volume in data_volumes:
        assert volume["hostPath"]["path"].startswith("/mnt/"), volume
    # The ports laconic-so's kind cluster maps: 8899, 8900, 8001 and 9000-9025.
    args = node["args"]
    assert args[args.index("--rpc-port") + 1] == "8899"
    assert args[args.index("--gossip-port") + 1] == "8001"
    assert args[args.index("--dynamic-port-range") + 1] == "9000-9026"
    # The identity comes from a Secret made beforehand; the release holds no key.
    assert not of_kind(docs, "Secret")
    identity = next(v for v in spec["volumes"] if v["name"] == "identity")
    assert identity["secret"]["secretName"] == "agave-identity"
    hosts = {rule["host"] for i in of_kind(docs, "Ingress") for rule in i["spec"]["rules"]}
    assert len(hosts) == 2


@pytest.mark.helm
def test_biscayne_caddy_keeps_certificates_across_cluster_rebuilds(helm_bin: str) -> None:
    docs = render(helm_bin, overlay("caddy-ingress", "biscayne.yaml"), release="caddy-ingress")
    spec = pod_spec(docs)
    backup = next(v for v in spec["volumes"] if v["name"] == "cert-backup")
    assert backup["hostPath"]["path"] == "/mnt/caddy-cert-backup"
    assert [c["name"] for c in spec["initContainers"]] == ["cert-restore"]


@pytest.mark.helm
def test_kind_test_node_is_small_and_reachable_by_name(helm_bin: str) -> None:
    docs = render(helm_bin, overlay("agave", "kind-test.yaml"), release="agave")
    spec = pod_spec(docs)
    assert "hostNetwork" not in spec
    assert spec["containers"][0]["command"] == ["solana-test-validator"]
    hosts = {rule["host"] for i in of_kind(docs, "Ingress") for rule in i["spec"]["rules"]}
    assert hosts == {"rpc.agave.localhost", "ws.agave.localhost"}


@pytest.mark.unit
@pytest.mark.parametrize("readme", README_CHARTS, ids=lambda p: p.parent.name)
def test_readme_install_lines_name_files_that_exist(readme: Path) -> None:
    commands = readme_commands(readme)
    assert commands, f"{readme} shows no `helm upgrade --install` line"
    for argv in commands:
        assert argv[:3] == ["helm", "upgrade", "--install"]
        assert (REPO / argv[4] / "Chart.yaml").exists(), argv
        values = [argv[i + 1] for i, a in enumerate(argv) if a in ("--values", "-f")]
        assert all((REPO / v).exists() for v in values), argv


@pytest.mark.unit
@pytest.mark.parametrize("readme", README_CHARTS, ids=lambda p: p.parent.name)
def test_readme_published_install_line_names_the_pushed_chart_and_version(readme: Path) -> None:
    """The line for the published chart names where the release workflow pushes it (the
    repository owner, lower-cased) and this chart's version."""
    chart = yaml.safe_load((readme.parent / "Chart.yaml").read_text())
    owner = chart["sources"][0].removeprefix("https://github.com/").split("/")[0].lower()
    (argv,) = readme_commands(readme, published=True)
    assert argv[4] == f"oci://ghcr.io/{owner}/charts/{chart['name']}"
    assert argv[argv.index("--version") + 1] == chart["version"]


@pytest.mark.helm
@pytest.mark.parametrize("readme", README_CHARTS, ids=lambda p: p.parent.name)
def test_readme_install_lines_render(helm_bin: str, readme: Path) -> None:
    for argv in readme_commands(readme):
        # The same line as `helm template`: everything but the cluster.
        template = [helm_bin, "template", *argv[3:]]
        done = subprocess.run(
            template, cwd=REPO, capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr}"
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        assert schema_errors(docs) == []


@pytest.mark.helm
def test_readme_install_lines_install_both_releases(helm_bin: str, kube_api: KubeAPI) -> None:
    # Every `helm upgrade --install` line of the two READMEs, typed as they stand (from the
    # repository root), then all of them again: the second round must converge, not fail.
    ensure_runtime_class(kube_api)
    lines = [argv for readme in README_CHARTS for argv in readme_commands(readme)]
    releases = {(argv[argv.index("--namespace") + 1], argv[3]) for argv in lines}
    try:
        for _ in range(2):
            for argv in lines:
                done = subprocess.run(
                    [helm_bin, *argv[1:]],
                    cwd=REPO,
                    env=kube_api.env,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=300,
                )
                assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr}"
                namespace = argv[argv.index("--namespace") + 1]
                assert pods_admitted(kube_api, namespace) == [], " ".join(argv)
        for namespace, release in releases:
            status = subprocess.run(
                [helm_bin, "status", release, "--namespace", namespace, "-o", "json"],
                env=kube_api.env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            assert yaml.safe_load(status.stdout)["info"]["status"] == "deployed"
        assert {release for _, release in releases} == {"caddy-ingress", "agave"}
    finally:
        for namespace, release in releases:
            uninstall(helm_bin, kube_api, namespace, release)
            kube_api.delete_namespace(namespace)
        # The next test types the same lines: their namespaces must be gone, not terminating.
        deadline = time.monotonic() + 300  # a real cluster first stops the pods and claims
        while any(
            kube_api.harness.get_or_none(f"/api/v1/namespaces/{namespace}")
            for namespace, _ in releases
        ):
            assert time.monotonic() < deadline, "namespaces still terminating after 300 s"
            time.sleep(0.5)
