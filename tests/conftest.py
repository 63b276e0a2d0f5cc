"""Shared test setup: finds the provisioned tools, and turns each marker into a requirement.

A test whose tool is missing skips with the reason; under CI (CI=true) every marker must run,
real kind (`cluster`) included, so a missing tool fails the test instead of hiding behind a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.imagebuild import Builder

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("LACONIC_HELM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "laconic-helm"
)
TOOLS_BIN = CACHE / "bin"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Every subprocess a test starts, and the driver under test, find the provisioned tools first.
os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

HELM_BINARIES = {4: "helm", 3: "helm3"}
AGAVE_PROGRAMS = ("agave-validator", "solana-test-validator")

# kube_api, namespace, kubelet, kind_cli: tests/harness/pytest_fixtures.py; `deployed` (a
# converged deployment for the session): tests/harness/session_deployment.py; the
# fault-injection figures at the end of a run: tests/harness/faultsummary.py.
pytest_plugins = [
    "tests.harness.pytest_fixtures",
    "tests.harness.session_deployment",
    "tests.harness.faultsummary",
]


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return done.returncode == 0


def _missing(marker: str) -> str | None:
    """Returns why `marker`'s requirement is unmet, or None."""
    if marker == "helm":
        absent = [name for name in HELM_BINARIES.values() if shutil.which(name) is None]
        return f"helm binaries not provisioned: {', '.join(absent)}" if absent else None
    if marker == "docker":
        return None if _docker_answers() else "no Docker daemon answers"
    if marker == "apiserver":
        absent = [
            n
            for n in ("kube-apiserver", "kube-controller-manager", "etcd")
            if shutil.which(n) is None
        ]
        return f"stand-in API binaries not provisioned: {', '.join(absent)}" if absent else None
    if marker == "cluster":
        from tests.harness import realkind

        return realkind.missing()
    if marker == "agave":
        absent = [n for n in AGAVE_PROGRAMS if shutil.which(n) is None]
        return (
            f"agave not built: {', '.join(absent)} (scripts/provision-tools agave)"
            if absent
            else None
        )
    return None


_requirement_cache: dict[str, str | None] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("helm", "docker", "apiserver", "cluster", "agave"):
        if item.get_closest_marker(marker) is None:
            continue
        if marker not in _requirement_cache:
            _requirement_cache[marker] = _missing(marker)
        reason = _requirement_cache[marker]
        if reason is None:
            continue
        if IN_CI:
            pytest.fail(f"CI must run {marker}-marked tests: {reason}", pytrace=False)
        pytest.skip(reason)


def helm_binary(major: int) -> str:
    """The path of the provisioned helm of `major`; without it the test skips (fails in CI)."""
    path = shutil.which(HELM_BINARIES[major])
    if path is None:
        reason = f"helm {major} not provisioned"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(params=sorted(HELM_BINARIES), ids=lambda major: f"helm{major}")
def helm_bin(request: pytest.FixtureRequest) -> str:
    """A real helm binary; tests using it run once with Helm 4 and once with Helm 3."""
    return helm_binary(request.param)


_REQUIRED_IN_CI = {"helm", "docker", "apiserver", "cluster", "agave"}
_skipped_required: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and _REQUIRED_IN_CI & set(report.keywords):
        _skipped_required.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped_required:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if IN_CI and _skipped_required:
        terminalreporter.write_line(
            f"CI requires helm/docker/apiserver/cluster tests to run; "
            f"{len(_skipped_required)} skipped:",
            red=True,
        )
        for nodeid in _skipped_required:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture
def builder(tmp_path: Path) -> Iterator[Builder]:
    """Small images built offline for one test, removed after it."""
    b = Builder(f"laconic-helm-test/img-{uuid.uuid4().hex[:8]}", tmp_path, [])
    try:
        yield b
    finally:
        b.remove()
