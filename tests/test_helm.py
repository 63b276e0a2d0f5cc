"""The helm adapter: stderr classification and meanings, helm processes at work on this host
(unit, with real processes), and connecting to real helm 3 and 4 (helm)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from pyhelm3 import errors as helm_errors

from laconic_helm import helm
from laconic_helm.errors import ToolMissingError
from laconic_helm.helm import classify, release_error
from tests.harness.waits import wait_until


@pytest.mark.unit
@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        ("UPGRADE FAILED: context canceled", helm_errors.CommandCancelledError),
        ("etcdserver: request timed out; release: not found", helm_errors.ConnectionError),
        ("release: not found", helm_errors.ReleaseNotFoundError),
        (
            "execution error at (mini/templates/x.yaml:1:3): boom",
            helm_errors.FailedToRenderChartError,
        ),
        ('Deployment.apps "x" is invalid: spec.replicas', helm_errors.InvalidResourceError),
        ("another operation (install/upgrade/rollback) is in progress", helm_errors.Error),
    ],
    ids=["cancelled", "etcd-first", "not-found", "render", "invalid", "unclassified"],
)
def test_stderr_classification_keeps_pyhelm3_classes(stderr: str, cls: type) -> None:
    assert classify(f"Error: {stderr}") is cls


LOCKED = "another helm operation holds the release (a pending revision)"
NOT_READY = "resources did not become ready within the timeout"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("stderr", "meaning"),
    [
        ("UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress", LOCKED),
        ('UPGRADE FAILED: "mini" has no deployed releases', "no deployed revision to upgrade from"),
        (
            'Unable to continue with install: ServiceAccount "x" in namespace "apps" exists and '
            "cannot be imported into the current release: invalid ownership metadata",
            "an object it renders exists and belongs to something else",
        ),
        (
            'UPGRADE FAILED: Apply failed with 2 conflicts: conflict with "kubectl"',
            "server-side apply conflict with another field manager",
        ),
        ("UPGRADE FAILED: context deadline exceeded", NOT_READY),
        ("INSTALLATION FAILED: timed out waiting for the condition", NOT_READY),
        ("UPGRADE FAILED: context canceled", "helm was stopped; the revision is recorded failed"),
        ("something new", "helm upgrade failed"),
    ],
    ids=[
        "locked",
        "no-deployed",
        "not-importable",
        "ssa-conflict",
        "deadline",
        "timeout",
        "cancelled",
        "other",
    ],
)
def test_release_errors_say_what_helm_meant_and_keep_its_words(stderr: str, meaning: str) -> None:
    stderr = f"WARNING: kubeconfig is group-readable\nError: {stderr}\n"
    err = release_error("mini", "upgrade", classify(stderr)(1, b"", stderr.encode()))
    tail = stderr.strip().splitlines()[-1]
    assert err.message == f"release mini: {meaning}: {tail}"
    assert err.release == "mini"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "hit"),
    [
        (["helm", "upgrade", "mini", "./c", "-n", "apps", "--install"], True),
        (["/usr/bin/helm3", "rollback", "mini", "2", "--namespace=apps"], True),
        (["helm", "uninstall", "mini", "-napps"], True),
        (["helm", "upgrade", "mini", "./c", "--namespace", "other"], False),
        (["helm", "status", "mini", "-n", "apps"], False),
        (["helm", "upgrade", "other", "./mini", "-n", "apps"], False),
        (["kubectl", "rollout", "upgrade", "mini", "-n", "apps"], False),
        (["helm", "upgrade", "mini", "./c"], True),
    ],
    ids=[
        "upgrade",
        "rollback",
        "short-ns",
        "other-ns",
        "read-only",
        "other-release",
        "not-helm",
        "no-ns-given",
    ],
)
def test_helm_command_lines_that_hold_a_release(argv: list[str], hit: bool) -> None:
    assert helm.targets(argv, "mini", "apps") is hit


def _stand_in_helm(*args: str) -> subprocess.Popen[bytes]:
    """/bin/sh under the name "helm", with helm's arguments after its own, alive until killed."""
    child = subprocess.Popen(["helm", "-c", "sleep 30", *args], executable="/bin/sh")
    wait_until(  # until exec'd
        lambda: Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(b"helm\0"),
        "the stand-in helm to show up",
        interval=0.05,
    )
    return child


@pytest.mark.unit
def test_live_helm_on_this_host_is_found_by_its_command_line() -> None:
    with _stand_in_helm("upgrade", "mini", "./chart", "-n", "apps") as child:
        try:
            assert child.pid in helm.live_helm_pids("mini", "apps")
            assert child.pid not in helm.live_helm_pids("mini", "other")
            assert child.pid not in helm.live_helm_pids("other", "apps")
        finally:
            child.kill()
    assert child.pid not in helm.live_helm_pids("mini", "apps")


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}, {name: d, context: {cluster: x}}]\n"
        "users: [{name: u, user: {}}]\n"
    )
    return path


@pytest.mark.unit
def test_helm_on_another_cluster_does_not_count(tmp_path: Path) -> None:
    mine = "https://127.0.0.1:6443"
    other = _kubeconfig(tmp_path / "other", "https://10.0.0.9:6443/")
    same = _kubeconfig(tmp_path / "same", mine)
    with (
        _stand_in_helm("upgrade", "mini", "c", "-n", "apps", "--kubeconfig", str(other)) as far,
        _stand_in_helm("upgrade", "mini", "c", "-n", "apps", f"--kubeconfig={same}") as near,
        _stand_in_helm("upgrade", "mini", "c", "-n", "apps", "--kube-context", "nope") as unsure,
    ):
        try:
            busy = helm.live_helm_pids("mini", "apps", server=mine)
            assert far.pid not in busy
            assert near.pid in busy
            assert unsure.pid in busy  # its server cannot be told: it may be ours
            assert far.pid in helm.live_helm_pids("mini", "apps")
        finally:
            for child in (far, near, unsure):
                child.kill()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "env", "server"),
    [
        (["helm", "--kube-apiserver", "https://a:1/"], {}, "https://a:1"),
        (["helm"], {"HELM_KUBEAPISERVER": "https://b:2"}, "https://b:2"),
        (["helm", "--kubeconfig", "kc"], {}, "https://kc:1"),
        (["helm"], {"KUBECONFIG": "missing:kc"}, "https://kc:1"),
        (["helm"], {"HOME": "home"}, "https://home:1"),
        (["helm", "--kubeconfig=kc", "--kube-context", "d"], {}, None),
        (["helm", "--kubeconfig", "missing"], {}, None),
    ],
    ids=["flag", "env", "kubeconfig-flag", "kubeconfig-env", "home", "other-context", "unreadable"],
)
def test_the_server_a_helm_talks_to(
    tmp_path: Path, argv: list[str], env: dict[str, str], server: str | None
) -> None:
    _kubeconfig(tmp_path / "kc", "https://kc:1")
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    _kubeconfig(tmp_path / "home" / ".kube" / "config", "https://home:1")
    if "HOME" in env:
        env = {"HOME": str(tmp_path / env["HOME"])}
    assert helm.server_of(argv, env, tmp_path) == server


# -- connecting, with real helm 3 and 4 ---------------------------------------------------------


def _connect(executable: str) -> helm.Helm:
    return asyncio.run(helm.connect(kubeconfig=None, context=None, executable=executable))


@pytest.mark.helm
def test_connect_reads_the_version_without_a_shell(helm_bin: str) -> None:
    connected = _connect(helm_bin)
    assert connected.major == (3 if helm_bin.endswith("helm3") else 4)
    assert connected.client.version == connected.version


@pytest.mark.helm
def test_connect_names_a_missing_helm(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match="not found"):
        _connect(str(tmp_path / "helm"))
