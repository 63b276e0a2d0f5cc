"""doctor: what an operator sees when a tool is missing, using the real tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laconic_helm.tools import helm_major_minor
from tests.harness import realkind


def _doctor(
    path_dirs: list[Path], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "PATH": os.pathsep.join(map(str, path_dirs))}
    env.pop("LACONIC_HELM_KIND", None)
    return subprocess.run(
        [sys.executable, "-m", "laconic_helm", *args, "doctor"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def _bin_with(tmp_path: Path, **tools: str) -> Path:
    """A PATH folder holding only the named tools (name -> program found on the real PATH)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, program in tools.items():
        found = shutil.which(program)
        assert found, f"{program} must be provisioned for this test"
        (folder / name).symlink_to(found)
    return folder


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [("v4.1.4", (4, 1)), ("v3.18.0+gcc58e3f", (3, 18)), ("3.17.2", (3, 17)), ("dev", None)],
)
def test_helm_version_parsing(text: str, expected: tuple[int, int] | None) -> None:
    assert helm_major_minor(text) == expected


@pytest.mark.docker
@pytest.mark.helm
def test_doctor_without_kind_names_it_with_install_hint_and_fails(tmp_path: Path) -> None:
    folder = _bin_with(tmp_path, docker="docker", helm="helm")
    done = _doctor([folder, Path(sys.executable).parent])
    assert done.returncode == 2  # a host without a required tool is not as required
    kind_lines = [line for line in done.stderr.splitlines() if "kind" in line]
    assert kind_lines[0].startswith("✗ kind: not found; install kind: go install sigs.k8s.io/kind@")
    assert "Traceback" not in done.stderr


@pytest.mark.docker
@pytest.mark.helm
def test_doctor_json_is_one_object(tmp_path: Path) -> None:
    folder = _bin_with(tmp_path, docker="docker", helm="helm3")
    done = _doctor([folder, Path(sys.executable).parent], "--output", "json")
    doc = json.loads(done.stdout)  # the whole stdout is exactly one JSON document
    assert done.returncode == 2  # a host without a required tool is not as required
    assert doc["ok"] is False
    tools = {t["name"]: t for t in doc["tools"]}
    assert tools["kind"]["ok"] is False
    assert tools["helm"]["ok"] is True and tools["helm"]["version"].startswith("v3.")
    assert tools["docker"]["ok"] is True


def _kernel_withholds_sys_resource() -> bool:
    """Whether this host's kernel keeps CAP_SYS_RESOURCE (bit 24) from every process, the
    Docker daemon's runc included: then a plain daemon cannot start privileged containers."""
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status)[1], 16)
    return not bounding & (1 << 24)


@pytest.mark.cluster
@pytest.mark.helm
def test_doctor_passes_when_every_tool_works_and_kind_can_run_nodes(tmp_path: Path) -> None:
    folder = _bin_with(tmp_path, docker="docker", helm="helm", kind="kind")
    done = _doctor([folder, Path(sys.executable).parent], env=realkind.docker_env())
    assert done.returncode == 0, done.stderr
    assert "✓ helm v4." in done.stderr
    assert "✓ kind v0." in done.stderr
    assert "✓ privileged containers: allowed" in done.stderr


@pytest.mark.docker
@pytest.mark.helm
def test_doctor_says_kind_cannot_create_a_cluster_where_privileged_containers_fail(
    tmp_path: Path,
) -> None:
    folder = _bin_with(tmp_path, docker="docker", helm="helm", kind="kind")
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}  # the host's own daemon
    done = _doctor([folder, Path(sys.executable).parent], "--output", "json", env=env)
    tools = {t["name"]: t for t in json.loads(done.stdout)["tools"]}
    assert tools["docker"]["ok"] is True
    if not _kernel_withholds_sys_resource():
        assert tools["privileged containers"]["ok"] is True
        assert done.returncode == 0
        return
    assert done.returncode == 2  # a host without a required tool is not as required
    assert tools["kind"]["ok"] is False
    assert tools["kind"]["detail"] == "found, but cannot create a cluster here (below)"
    privileged = tools["privileged containers"]
    assert privileged["ok"] is False
    assert privileged["detail"].startswith("refused, so kind cannot create a cluster")
    assert "caps" in privileged["detail"]  # docker's own reason follows
