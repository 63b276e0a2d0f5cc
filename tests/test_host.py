"""Tests of host.py: agave's host settings and the cgroup version, read from a fake /proc tree
(never the real host's, which no test changes), and through the real CLI with LACONIC_HELM_PROC
pointing at such a tree: doctor shows them, deploy and plan warn, --strict-host refuses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from laconic_helm import host
from laconic_helm.errors import UserError
from laconic_helm.output import Reporter
from laconic_helm.spec import parse_spec

_SHORT = {
    "net.core.rmem_max": 4194304,
    "net.core.rmem_default": 212992,
    "net.core.wmem_max": 4194304,
    "net.core.wmem_default": 212992,
    "vm.max_map_count": 65530,
    "fs.nr_open": 1048576,
}
_LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units
Max open files            20000                20000                files
Max locked memory         {memlock}              {memlock}              bytes
"""
_V1 = "25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
_V2 = "25 24 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw\n"


def fake_proc(
    root: Path,
    *,
    sysctls: dict[str, int] | None = None,
    memlock: str = "unlimited",
    mountinfo: str | None = _V2,
) -> Path:
    """A proc tree holding only what host.py reads; every setting tuned unless given."""
    for name, value in {**host.SYSCTLS, **(sysctls or {})}.items():
        path = root / "sys" / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    (root / "self").mkdir(parents=True, exist_ok=True)
    (root / "self" / "limits").write_text(_LIMITS.format(memlock=memlock))
    if mountinfo is not None:
        (root / "self" / "mountinfo").write_text(
            "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n" + mountinfo
        )
    return root


def short_proc(root: Path) -> Path:
    """This sandbox's own figures: buffers, maps and memlock short, cgroup v1."""
    return fake_proc(root, sysctls=_SHORT, memlock="8388608", mountinfo=_V1)


def make_spec(tmp_path: Path, *, mode: str | None, **cluster: Any) -> Any:
    """A spec with Caddy and an agave release whose mode comes from a values file."""
    release: dict[str, Any] = {"name": "node", "chart": "builtin:agave", "namespace": "agave"}
    if mode is not None:
        (tmp_path / "agave.yaml").write_text(f"mode: {mode}\n")
        release["valuesFiles"] = ["agave.yaml"]
    doc = {
        "cluster": {"name": "lh", **cluster},
        "releases": [
            {"name": "caddy", "chart": "builtin:caddy-ingress", "namespace": "caddy-system"},
            release,
        ],
    }
    return parse_spec(doc, source="test.yaml", base=tmp_path)


# -- reading and judging ----------------------------------------------------------------------


@pytest.mark.unit
def test_short_settings_name_the_command_that_fixes_each(tmp_path: Path) -> None:
    settings = {s.name: s for s in host.agave_settings(short_proc(tmp_path))}
    assert [n for n, s in settings.items() if not s.ok] == [
        "net.core.rmem_max",
        "net.core.rmem_default",
        "net.core.wmem_max",
        "net.core.wmem_default",
        "vm.max_map_count",
        "memlock",
    ]
    rmem = settings["net.core.rmem_max"]
    assert (rmem.value, rmem.wanted) == ("4194304", ">= 134217728")
    assert rmem.fix == "sysctl -w net.core.rmem_max=134217728"
    assert rmem.also == (
        "to keep it: echo 'net.core.rmem_max=134217728' >> /etc/sysctl.d/21-agave-validator.conf"
    )
    assert settings["vm.max_map_count"].fix == "sysctl -w vm.max_map_count=1000000"
    assert settings["fs.nr_open"].ok is True
    memlock = settings["memlock"]
    assert memlock.value == "8388608"
    assert memlock.fix.startswith("echo '* - memlock unlimited' >> /etc/security/limits.d/")
    assert '"default-ulimits": {"memlock"' in memlock.also


@pytest.mark.unit
@pytest.mark.parametrize(
    ("memlock", "ok"), [("unlimited", True), ("2000000000", True), ("65536", False)]
)
def test_memlock_wants_unlimited_or_two_gigabytes(tmp_path: Path, memlock: str, ok: bool) -> None:
    settings = host.agave_settings(fake_proc(tmp_path, memlock=memlock))
    assert [s.ok for s in settings] == [True] * len(host.SYSCTLS) + [ok]


@pytest.mark.unit
def test_an_unreadable_setting_cannot_be_told(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    (proc / "sys" / "vm" / "max_map_count").unlink()
    (proc / "self" / "limits").unlink()
    found = {s.name: s for s in host.agave_settings(proc)}
    assert (found["vm.max_map_count"].value, found["vm.max_map_count"].ok) == (None, None)
    assert found["memlock"].ok is None
    assert found["memlock"].line().startswith("? memlock = unreadable: may be short: ")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mountinfo", "cluster", "ok"),
    [
        (_V2, {"nodeImage": "kindest/node:v1.35.0"}, True),
        (_V1, {"nodeImage": "kindest/node:v1.35.0"}, False),
        (_V1, {"nodeImage": "kindest/node:v1.36.1@sha256:ab"}, False),
        (_V1, {"nodeImage": "kindest/node:v1.34.0"}, True),
        (_V1, {}, None),  # kind's default node image: its version is not in the spec
        (
            _V1,
            {
                "nodeImage": "kindest/node:v1.35.0",
                "kindPatches": {
                    "kubeadm": [{"kind": "KubeletConfiguration", "failCgroupV1": False}]
                },
            },
            True,
        ),
        (_V2 + _V1, {"nodeImage": "kindest/node:v1.35.0"}, False),  # the last mount is seen
        (None, {"nodeImage": "kindest/node:v1.35.0"}, None),
    ],
)
def test_cgroup_v1_is_short_only_for_a_kubelet_that_refuses_it(
    tmp_path: Path, mountinfo: str | None, cluster: dict[str, Any], ok: bool | None
) -> None:
    spec = make_spec(tmp_path, mode=None, **cluster)
    setting = host.cgroup_setting(fake_proc(tmp_path / "proc", mountinfo=mountinfo), spec.cluster)
    assert setting.ok is ok
    assert setting.fix == (
        "add {kind: KubeletConfiguration, failCgroupV1: false} to the spec's "
        "cluster.kindPatches.kubeadm (before the cluster is created)"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mode", "inline", "tuned"),
    [
        ("rpc", None, ["node (rpc)"]),
        ("validator", None, ["node (validator)"]),
        ("test", None, []),
        (None, None, []),  # the chart's default mode is test
        ("test", "rpc", ["node (rpc)"]),  # inline values come last
    ],
)
def test_only_agave_validator_modes_need_tuning(
    tmp_path: Path, mode: str | None, inline: str | None, tuned: list[str]
) -> None:
    spec = make_spec(tmp_path, mode=mode)
    if inline is not None:
        release = spec.releases[1].model_copy(update={"values": {"mode": inline}})
        spec = spec.model_copy(update={"releases": (spec.releases[0], release)})
    assert host.tuned_releases(spec) == tuned


@pytest.mark.unit
def test_a_test_node_is_checked_only_for_the_cgroup_version(tmp_path: Path) -> None:
    reporter = Reporter(stream=io.StringIO())
    spec = make_spec(tmp_path, mode="test")
    host.check_tuning(spec, reporter, strict=True, proc=short_proc(tmp_path / "short"))
    assert [s.status for s in reporter.steps] == ["warning"]  # cgroup v1, version unknown
    host.check_tuning(spec, Reporter(stream=io.StringIO()), strict=True, proc=fake_proc(tmp_path))
    assert host.settings_for(spec, fake_proc(tmp_path)) == []


@pytest.mark.unit
def test_short_host_warns_by_default_and_strict_refuses_naming_each(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, mode="rpc", nodeImage="kindest/node:v1.35.0")
    proc = short_proc(tmp_path / "proc")
    out = io.StringIO()
    reporter = Reporter(stream=out)
    host.check_tuning(spec, reporter, strict=False, proc=proc)
    (step,) = reporter.steps
    assert step.status == "warning"
    assert [s["name"] for s in step.data["settings"] if s["ok"] is False] == [
        *list(_SHORT)[:5],
        "memlock",
        "cgroup",
    ]
    assert "  ! net.core.rmem_max = 4194304: agave rpc/validator wants >= 134217728; fix: " in (
        out.getvalue()
    )

    strict = Reporter(stream=io.StringIO())
    with pytest.raises(UserError) as caught:
        host.check_tuning(spec, strict, strict=True, proc=proc)
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        "--strict-host: net.core.rmem_max is 4194304, wanted >= 134217728; "
        "net.core.rmem_default is 212992, wanted >= 134217728; "
        "net.core.wmem_max is 4194304, wanted >= 134217728; "
        "net.core.wmem_default is 212992, wanted >= 134217728; "
        "vm.max_map_count is 65530, wanted >= 1000000; "
        "memlock is 8388608, wanted a hard limit of unlimited or >= 2000000000 bytes; "
        "cgroup is v1, wanted cgroup v2, or failCgroupV1: false in the kind config"
    )
    assert strict.steps[0].status == "failed"


@pytest.mark.unit
def test_a_tuned_host_passes_strict(tmp_path: Path) -> None:
    reporter = Reporter(stream=io.StringIO())
    host.check_tuning(
        make_spec(tmp_path, mode="rpc"), reporter, strict=True, proc=fake_proc(tmp_path)
    )
    assert [(s.status, s.detail) for s in reporter.steps] == [("ok", "tuned")]


# -- through the CLI --------------------------------------------------------------------------


def _cli(tmp_path: Path, proc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the real CLI on `proc`; every tool it might start only records that it was."""
    recorder = tmp_path / "tool"
    recorder.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path / "calls"}\nexit 1\n')
    recorder.chmod(0o755)
    env = {
        **os.environ,
        host.PROC_ENV: str(proc),
        "LACONIC_HELM_STATE": str(tmp_path / "state"),
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        **{f"LACONIC_HELM_{t}": str(recorder) for t in ("DOCKER", "KIND", "HELM", "KUBECTL")},
    }
    return subprocess.run(
        [sys.executable, "-m", "laconic_helm", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )


def _rpc_spec_file(tmp_path: Path) -> Path:
    (tmp_path / "agave.yaml").write_text("mode: rpc\n")
    spec = tmp_path / "deployment.yaml"
    spec.write_text(
        "cluster: {name: lh-strict, nodeImage: 'kindest/node:v1.35.0'}\n"
        "releases:\n"
        "  - {name: agave, chart: 'builtin:agave', namespace: agave, valuesFiles: [agave.yaml]}\n"
    )
    return spec


@pytest.mark.unit
@pytest.mark.parametrize("command", [["plan"], ["deploy"], ["deploy", "--dry-run"]])
def test_strict_host_refuses_a_short_host_before_anything_runs(
    tmp_path: Path, command: list[str]
) -> None:
    spec = _rpc_spec_file(tmp_path)
    done = _cli(
        tmp_path, short_proc(tmp_path / "proc"), *command, "--spec", str(spec), "--strict-host"
    )
    assert done.returncode == 2, done.stderr
    error = done.stderr.splitlines()[-1]
    assert error.startswith("error: --strict-host: net.core.rmem_max is 4194304, wanted >= ")
    for name in [*list(_SHORT)[:5], "memlock", "cgroup"]:
        assert f"{name} is " in error
    assert (
        "  ! vm.max_map_count = 65530: agave rpc/validator wants >= 1000000; fix: sysctl -w "
        in (done.stderr)
    )
    assert not (tmp_path / "calls").exists()  # no tool ran: no docker, kind or helm
    assert not (tmp_path / "state").exists()  # no lock taken, no record written


@pytest.mark.unit
def test_strict_host_json_names_every_setting(tmp_path: Path) -> None:
    spec = _rpc_spec_file(tmp_path)
    proc = short_proc(tmp_path / "proc")
    done = _cli(tmp_path, proc, "--output", "json", "plan", "--spec", str(spec), "--strict-host")
    doc = json.loads(done.stdout)
    assert (done.returncode, doc["exit_code"], doc["changed"]) == (2, 2, False)
    (step,) = doc["steps"]
    assert (step["name"], step["status"]) == ("host", "failed")
    rmem = next(s for s in step["data"]["settings"] if s["name"] == "net.core.rmem_max")
    assert rmem["fix"] == "sysctl -w net.core.rmem_max=134217728"


@pytest.mark.unit
def test_without_strict_the_deploy_goes_on_with_a_warning(tmp_path: Path) -> None:
    spec = _rpc_spec_file(tmp_path)
    proc = short_proc(tmp_path / "proc")
    done = _cli(tmp_path, proc, "--output", "json", "deploy", "--spec", str(spec))
    doc = json.loads(done.stdout)
    assert (doc["steps"][0]["name"], doc["steps"][0]["status"]) == ("host", "warning")
    assert doc["steps"][1]["name"] == "preflight"  # it went on, to fail on the recording tools
    assert (tmp_path / "calls").exists()


@pytest.mark.unit
def test_doctor_shows_the_host_settings(tmp_path: Path) -> None:
    done = _cli(tmp_path, short_proc(tmp_path / "proc"), "--output", "json", "doctor")
    doc = json.loads(done.stdout)
    found = {t["name"]: t for t in doc["tools"]}
    rmem = found["net.core.rmem_max"]
    assert (rmem["required"], rmem["ok"], rmem["version"]) == (False, False, "4194304")
    assert "fix: sysctl -w net.core.rmem_max=134217728" in rmem["detail"]
    assert found["memlock"]["ok"] is False and found["fs.nr_open"]["ok"] is True
    assert found["cgroup"]["version"] == "v1"
    assert "net.core" not in (doc["error"] or "")  # a short setting never fails doctor
    assert "- vm.max_map_count 65530: agave rpc/validator wants >= 1000000" in done.stderr

    tuned = _cli(tmp_path, fake_proc(tmp_path / "tuned"), "--output", "json", "doctor")
    names = [*host.SYSCTLS, "memlock", "cgroup"]
    settings = [t for t in json.loads(tuned.stdout)["tools"] if t["name"] in names]
    assert [t["name"] for t in settings] == names
    assert all(t["ok"] for t in settings)
