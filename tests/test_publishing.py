"""Publishing both charts as real charts: what `helm package` ships, the Artifact Hub metadata in
Chart.yaml, the README that helm-docs renders from values.yaml, a push to a real OCI registry and
an install from it, and the release workflow that does the push on a tag."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts_support import CHART_NAMES, CHARTS, REPO, Scenario, render
from tests.conftest import TOOLS_BIN
from tests.harness import registry
from tests.harness.api import KubeAPI

# A Solana keypair as solana-keygen writes it: a JSON array of 64 byte values.
KEYPAIR = re.compile(r"\[\s*\d{1,3}(?:\s*,\s*\d{1,3}){63}\s*\]")
RELEASE_WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}


def _chart_yaml(chart: str) -> dict[str, Any]:
    return yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a tool; a failure shows its command and output."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}"
    return done


def _package(helm: str, chart: str, dest: Path) -> Path:
    """`helm package` of the chart in this checkout; returns the .tgz."""
    dest.mkdir(parents=True, exist_ok=True)
    _run([helm, "package", str(CHARTS / chart), "--destination", str(dest)])
    (tgz,) = dest.glob(f"{chart}-*.tgz")
    return tgz


def _tool(name: str, step: str) -> str:
    """A tool scripts/provision-tools provisions; its absence fails the test with the fix."""
    path = shutil.which(name, path=str(TOOLS_BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not provisioned: run scripts/provision-tools {step}", pytrace=False)
    return path


# --- what the package ships -------------------------------------------------------------------


@pytest.mark.helm
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_package_ships_the_chart_and_no_test_files(
    helm_bin: str, chart: str, tmp_path: Path
) -> None:
    source_ci = sorted((CHARTS / chart / "ci").glob("*-values.yaml"))
    assert source_ci, f"charts/{chart}/ci has no scenarios: nothing would prove they stay out"

    tgz = _package(helm_bin, chart, tmp_path / "out")
    with tarfile.open(tgz) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked" / chart
    shipped = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    ci_files = sorted(f for f in shipped if f.startswith("ci/"))
    assert not ci_files, f"{tgz.name} ships {ci_files}: charts/{chart}/.helmignore must list ci/"
    assert "README.md.gotmpl" not in shipped
    keypairs = [f for f in shipped if KEYPAIR.search((root / f).read_text(errors="replace"))]
    assert not keypairs, f"{tgz.name} ships keypair-looking arrays in {keypairs}"
    expected_templates = {
        p.relative_to(CHARTS / chart).as_posix()
        for p in (CHARTS / chart / "templates").rglob("*")
        if p.is_file()
    }
    missing = {"Chart.yaml", "values.yaml", "values.schema.json", "README.md"} - shipped
    assert not missing, f"{tgz.name} lacks {missing}"
    assert expected_templates <= shipped, f"{tgz.name} lacks {expected_templates - shipped}"
    # What ships is the chart as it is in the repository, byte for byte.
    for name in ("values.yaml", "values.schema.json", "README.md"):
        assert (root / name).read_bytes() == (CHARTS / chart / name).read_bytes(), name


@pytest.mark.unit
def test_the_keypair_pattern_finds_the_ci_keypairs() -> None:
    """The package test above looks for keypairs with KEYPAIR; it must see the real ones."""
    with_keys = [
        f.name for f in sorted(CHARTS.glob("*/ci/*-values.yaml")) if KEYPAIR.search(f.read_text())
    ]
    assert "rpc-keypair-values.yaml" in with_keys
    assert "validator-keypair-values.yaml" in with_keys


# --- Chart.yaml metadata ------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_chart_metadata_names_home_sources_icon_maintainers_and_license(chart: str) -> None:
    meta = _chart_yaml(chart)
    # The first source is this repository, the same for every chart; home and icon point into it.
    repo_url = meta["sources"][0]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo_url), repo_url
    assert {_chart_yaml(other)["sources"][0] for other in CHART_NAMES} == {repo_url}
    assert meta["home"] == f"{repo_url}/tree/main/charts/{chart}", meta["home"]
    assert all(s.startswith("https://") for s in meta["sources"]), meta["sources"]
    assert meta["maintainers"] and all(m.get("name") for m in meta["maintainers"])

    # The icon is this chart's own SVG, served raw from the repository's main branch.
    prefix = repo_url.replace("github.com", "raw.githubusercontent.com") + "/main/"
    assert meta["icon"].startswith(prefix), meta["icon"]
    icon = REPO / meta["icon"].removeprefix(prefix)
    assert icon == CHARTS / chart / "icon.svg", meta["icon"]
    assert icon.is_file(), f"{meta['icon']} points at {icon}, which is not in the repository"
    assert ET.parse(icon).getroot().tag == "{http://www.w3.org/2000/svg}svg"

    license_ = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert meta["annotations"]["artifacthub.io/license"] == license_


@pytest.mark.unit
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_chart_changes_annotation_is_a_list_of_kinds_and_descriptions(chart: str) -> None:
    changes = yaml.safe_load(_chart_yaml(chart)["annotations"]["artifacthub.io/changes"])
    assert isinstance(changes, list) and changes
    for change in changes:
        assert set(change) == {"kind", "description"}, change
        assert change["kind"] in CHANGE_KINDS, change
        assert change["description"].strip(), change


def _pod_images(docs: list[dict[str, Any]]) -> set[str]:
    """Every container and init container image of the rendered workloads and test pods."""
    images: set[str] = set()
    for doc in docs:
        spec = doc.get("spec") or {}
        pod = spec if doc["kind"] == "Pod" else (spec.get("template") or {}).get("spec") or {}
        for key in ("initContainers", "containers"):
            images.update(c["image"] for c in pod.get(key) or [])
    return images


@pytest.mark.helm
@pytest.mark.parametrize("helm_bin", [4], indirect=True, ids=["helm4"])
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_images_annotation_lists_the_images_the_defaults_deploy(helm_bin: str, chart: str) -> None:
    deployed = _pod_images(render(helm_bin, Scenario(chart, ())))
    listed = yaml.safe_load(_chart_yaml(chart)["annotations"]["artifacthub.io/images"])
    assert all(set(entry) == {"name", "image"} for entry in listed), listed
    assert len({entry["name"] for entry in listed}) == len(listed), listed
    annotated = {entry["image"] for entry in listed}
    assert annotated == deployed, (
        f"charts/{chart}/Chart.yaml artifacthub.io/images lists {sorted(annotated)}, "
        f"the default values deploy {sorted(deployed)}"
    )


# --- README.md from values.yaml -----------------------------------------------------------------


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_committed_readme_is_what_chart_docs_renders(chart: str, tmp_path: Path) -> None:
    _tool("helm-docs", "helm_docs")
    copy = tmp_path / "charts" / chart
    shutil.copytree(CHARTS / chart, copy)
    (copy / "README.md").unlink()
    _run(["bash", str(REPO / "scripts" / "chart-docs"), str(tmp_path / "charts")])
    rendered = (copy / "README.md").read_text()
    if rendered != (CHARTS / chart / "README.md").read_text():
        pytest.fail(
            f"charts/{chart}/README.md is not what its README.md.gotmpl and values.yaml render: "
            "run scripts/chart-docs and commit the result",
            pytrace=False,
        )


def _leaf_keys(values: Any, prefix: str = "") -> set[str]:
    if not isinstance(values, dict) or not values:
        return {prefix}
    keys: set[str] = set()
    for key, value in values.items():
        keys |= _leaf_keys(value, f"{prefix}.{key}" if prefix else key)
    return keys


@pytest.mark.unit
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_readme_values_table_documents_every_value(chart: str) -> None:
    """Every value is a row with a description, or inside a documented map row."""
    readme = (CHARTS / chart / "README.md").read_text()
    rows = dict(re.findall(r"^\| ([\w.-]+) \| [^|]+ \| .*? \| (.*) \|$", readme, re.MULTILINE))
    assert rows, f"charts/{chart}/README.md has no generated values table"
    undescribed = sorted(key for key, text in rows.items() if not text.strip())
    assert not undescribed, f"charts/{chart}/values.yaml lacks `# --` comments for {undescribed}"
    values = yaml.safe_load((CHARTS / chart / "values.yaml").read_text())
    absent = sorted(
        key
        for key in _leaf_keys(values)
        if not any(key == row or key.startswith(f"{row}.") for row in rows)
    )
    assert not absent, f"charts/{chart}/README.md does not document {absent}"


@pytest.mark.unit
def test_readme_sources_keep_the_prose_and_generate_the_table() -> None:
    for chart in CHART_NAMES:
        template = (CHARTS / chart / "README.md.gotmpl").read_text()
        assert '{{ template "chart.valuesTable" . }}' in template
        assert "## Install" in template, f"charts/{chart}/README.md.gotmpl lost its prose"
        assert "| Key | Default | Description |" not in template, "a hand-kept table is back"


# --- a real OCI registry ------------------------------------------------------------------------

DIGEST = re.compile(r"Digest:\s*(sha256:[0-9a-f]{64})")


def _reported_digest(done: subprocess.CompletedProcess[str]) -> str:
    found = DIGEST.search(done.stdout + done.stderr)
    assert found, f"no digest in helm's output:\n{done.stdout}{done.stderr}"
    return found.group(1)


@pytest.mark.helm
@pytest.mark.parametrize(
    "kube_api", [pytest.param("standin", marks=pytest.mark.apiserver)], indirect=True
)
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_push_to_an_oci_registry_and_install_from_it(
    helm_bin: str, chart: str, kube_api: KubeAPI, namespace: str, tmp_path: Path
) -> None:
    binary = _tool(registry.BINARY, "oci_registry")
    version = str(_chart_yaml(chart)["version"])
    tgz = _package(helm_bin, chart, tmp_path / "packaged")
    env = {**kube_api.env, "HELM_CONFIG_HOME": str(tmp_path / "helm-config")}

    with registry.running(binary, tmp_path / "registry") as reg:
        pushed = _run(
            [helm_bin, "push", str(tgz), f"oci://{reg.host}/charts", "--plain-http"], env=env
        )
        digest = _reported_digest(pushed)
        assert reg.tags(f"charts/{chart}") == [version]
        assert reg.manifest_digest(f"charts/{chart}", version) == digest

        ref = f"oci://{reg.host}/charts/{chart}"
        pulled = _run(
            [helm_bin, "pull", ref, "--version", version, "--plain-http"],
            env=env,
            cwd=tmp_path / "registry",
        )
        assert _reported_digest(pulled) == digest
        pulled_tgz = tmp_path / "registry" / tgz.name
        assert pulled_tgz.read_bytes() == tgz.read_bytes(), "the pulled chart is not the pushed one"

        release = f"pub-{chart}"
        install = [helm_bin, "upgrade", "--install", release, ref, "--version", version]
        install += ["--plain-http", "--namespace", namespace, "--kube-context", kube_api.context]
        _run(install, env=env)
        try:
            listed_releases = json.loads(
                _run(
                    [helm_bin, "list", "--namespace", namespace, "--output", "json"], env=env
                ).stdout
            )
            assert [(r["name"], r["chart"], r["status"]) for r in listed_releases] == [
                (release, f"{chart}-{version}", "deployed")
            ]
            listed = kube_api.harness.get(
                f"/apis/apps/v1/namespaces/{namespace}/deployments"
                f"?labelSelector=app.kubernetes.io/instance%3D{release}"
            )["items"]
            assert [d["metadata"]["labels"]["helm.sh/chart"] for d in listed] == [
                f"{chart}-{version}"
            ]
        finally:
            subprocess.run(
                [helm_bin, "uninstall", release, "--namespace", namespace],
                env=env,
                capture_output=True,
                check=False,
                timeout=120,
            )


# --- the release workflow -----------------------------------------------------------------------


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load(RELEASE_WORKFLOW.read_text())


def _steps_text(workflow: dict[Any, Any]) -> str:
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    return "\n".join(str(s.get("run", "")) for s in steps)


@pytest.mark.unit
def test_release_workflow_runs_on_chart_version_tags() -> None:
    workflow = _workflow()
    # YAML 1.1 reads the key `on` as True.
    trigger = workflow.get("on", workflow.get(True))
    assert set(trigger) == {"push"}, trigger
    patterns = trigger["push"]["tags"]
    for chart in CHART_NAMES:
        assert f"{chart}-v*" in patterns, patterns
    assert workflow["permissions"]["packages"] == "write"
    assert workflow["permissions"]["contents"] == "read"


@pytest.mark.unit
def test_release_workflow_checks_the_tag_against_chart_yaml_and_pushes_that_chart() -> None:
    workflow = _workflow()
    text = _steps_text(workflow)
    # The tag names the chart folder and its version; Chart.yaml's version must equal it.
    assert "charts/$chart/Chart.yaml" in text
    assert re.search(r'"\$version" != "\$tag_version"', text), text
    assert 'helm package "charts/$chart"' in text
    assert "oci://ghcr.io/${{ github.repository_owner }}/charts" in text
    assert "helm registry login ghcr.io" in text and "GITHUB_TOKEN" in text
    # Every chart a tag may name is a folder with a Chart.yaml.
    for chart in CHART_NAMES:
        assert (CHARTS / chart / "Chart.yaml").is_file()


@pytest.mark.unit
def test_release_workflow_tag_parsing_matches_every_chart() -> None:
    """Runs the workflow's own tag-splitting shell on each chart's next tag."""
    text = _steps_text(_workflow())
    split = re.search(r"# tag split\n(.*?)# end tag split", text, re.DOTALL)
    assert split, "the workflow lost its marked tag-splitting lines"
    for chart in CHART_NAMES:
        version = str(_chart_yaml(chart)["version"])
        script = (
            f'GITHUB_REF_NAME="{chart}-v{version}"\n{split.group(1)}\necho "$chart $tag_version"'
        )
        done = _run(["bash", "-euc", script])
        assert done.stdout.split() == [chart, version]
