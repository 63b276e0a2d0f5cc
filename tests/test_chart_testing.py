"""chart-testing's `ct lint` over both charts, run as CI runs it, with the real ct.

ct lints the charts that changed against `origin/main` and fails a changed chart whose version
was not bumped. A fresh CI clone has only main, so each test builds a throw-away repository:
its main (pushed to a bare `origin`) holds the charts and ct configuration of this working tree,
and a branch changes them. ct then runs there with yamale, yamllint and the helm under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.charts_support import CHART_NAMES, REPO, ci_scenarios

CT_FILES = ("charts", "ct.yaml", "chart_schema.yaml", "lintconf.yaml")

pytestmark = pytest.mark.helm


def _version(chart: str) -> str:
    """The chart's version in this checkout (the throw-away repository's main)."""
    return str(yaml.safe_load((REPO / "charts" / chart / "Chart.yaml").read_text())["version"])


def _bump(version: str) -> str:
    major, minor, patch = version.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


@dataclass(frozen=True)
class CtRepo:
    """A git repository on a branch off main, with the tools ct calls on its PATH."""

    path: Path
    env: dict[str, str]

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.path, env=self.env, check=True, capture_output=True)

    def change(self, chart: str, *, bump: bool) -> None:
        """Commits a change to the chart's values, with or without a patch version bump."""
        chart_dir = self.path / "charts" / chart
        with (chart_dir / "values.yaml").open("a") as values:
            values.write("# changed on a branch\n")
        if bump:
            chart_yaml = chart_dir / "Chart.yaml"
            old = _version(chart)
            chart_yaml.write_text(
                chart_yaml.read_text().replace(f"version: {old}\n", f"version: {_bump(old)}\n", 1)
            )
        self.git("commit", "--quiet", "--all", "--message", f"change {chart}")

    def ct_lint(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ct", "lint", "--config", "ct.yaml"],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )


def tool_path(helm: str, tmp_path: Path) -> str:
    """PATH with `helm` being the binary under test, and this interpreter's yamale/yamllint."""
    ct = shutil.which("ct")
    if ct is None:
        pytest.skip("ct (chart-testing) not provisioned; run scripts/provision-tools")
    scripts = Path(sys.executable).parent
    for tool in ("yamale", "yamllint"):
        if not (scripts / tool).exists() and shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (pip install {tool})")
    helm_dir = tmp_path / "helm-bin"
    helm_dir.mkdir()
    (helm_dir / "helm").symlink_to(helm)
    return os.pathsep.join([str(helm_dir), str(scripts), str(Path(ct).parent), os.environ["PATH"]])


@pytest.fixture
def ct_repo(helm_bin: str, tmp_path: Path) -> Iterator[CtRepo]:
    env = {
        **os.environ,
        "PATH": tool_path(helm_bin, tmp_path),
        "GIT_AUTHOR_NAME": "ct test",
        "GIT_AUTHOR_EMAIL": "ct@example.org",
        "GIT_COMMITTER_NAME": "ct test",
        "GIT_COMMITTER_EMAIL": "ct@example.org",
        # helm keeps its caches and plugins out of the user's home.
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    work = tmp_path / "work"
    work.mkdir()
    for name in CT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy2(source, work / name)
    repo = CtRepo(work, env)
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True, env=env)
    repo.git("init", "--quiet", "--initial-branch", "main")
    repo.git("add", "--all")
    repo.git("commit", "--quiet", "--message", "main")
    repo.git("remote", "add", "origin", str(origin))
    repo.git("push", "--quiet", "origin", "main")
    repo.git("fetch", "--quiet", "origin")
    repo.git("switch", "--quiet", "--create", "change")
    yield repo


def test_ct_lint_passes_for_both_charts_with_a_version_bump(ct_repo: CtRepo) -> None:
    for chart in CHART_NAMES:
        ct_repo.change(chart, bump=True)
    done = ct_repo.ct_lint()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for chart in CHART_NAMES:
        bumped = _bump(_version(chart))
        assert f'✔︎ {chart} => (version: "{bumped}"' in output, output
        # Every ci scenario went through helm lint.
        for values in sorted((REPO / "charts" / chart / "ci").glob("*-values.yaml")):
            assert f'values file "charts/{chart}/ci/{values.name}"' in output
    assert "All charts linted successfully" in output


@pytest.mark.parametrize("helm_bin", [4], indirect=True, ids=["helm4"])
def test_ct_lint_fails_a_changed_chart_without_a_version_bump(ct_repo: CtRepo) -> None:
    ct_repo.change("agave", bump=False)
    done = ct_repo.ct_lint()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "chart version not ok. Needs a version bump!" in output
    assert f'✖︎ agave => (version: "{_version("agave")}"' in output
    # The unchanged chart is not linted at all.
    assert "caddy-ingress =>" not in output


@pytest.mark.parametrize("helm_bin", [4], indirect=True, ids=["helm4"])
def test_ct_lint_applies_the_repositorys_chart_schema(ct_repo: CtRepo) -> None:
    chart_yaml = ct_repo.path / "charts" / "caddy-ingress" / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("type: application", "type: library"))
    ct_repo.change("caddy-ingress", bump=True)
    done = ct_repo.ct_lint()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "type: 'library' not in ('application',)" in output


@pytest.mark.unit
def test_ct_install_runs_only_scenarios_kind_can_bring_up() -> None:
    # The workflow drops the scenarios marked `# ct-install: skip`; every other one must come up
    # on a plain kind cluster: no real agave node, no cloud load balancer.
    for chart in CHART_NAMES:
        for scenario in ci_scenarios(chart):
            values = scenario.values()
            needs_more_than_kind = (
                values.get("mode", "test") != "test"
                or values.get("hostNetwork", False)
                or values.get("service", {}).get("type") == "LoadBalancer"
            )
            assert scenario.ct_installable is not needs_more_than_kind, scenario.id


@pytest.mark.unit
def test_workflow_runs_ct_lint_and_install_with_both_helm_majors() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "charts.yaml").read_text())
    for job, command in (
        ("lint", "ct lint --config ct.yaml"),
        ("install", "ct install --config ct.yaml"),
    ):
        steps = workflow["jobs"][job]["steps"]
        assert any(command in step.get("run", "") for step in steps), job
        majors = {v.split(".")[0] for v in workflow["jobs"][job]["strategy"]["matrix"]["helm"]}
        assert majors == {"v3", "v4"}, job
    lint_runs = " ".join(step.get("run", "") for step in workflow["jobs"]["lint"]["steps"])
    assert "--target-branch main" in lint_runs
