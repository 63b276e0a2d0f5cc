"""Helm through pyhelm3, with every helm process started by `laconic_helm.proc`.

pyhelm3 runs helm under `/bin/sh -c`, so cancelling its task signals the shell and leaves helm
running. `ExecCommand` replaces that one method: argv without a shell, in helm's own session,
and on cancellation SIGINT to helm itself (helm then records the revision `failed`, never
pending), then SIGKILL after a grace period. pyhelm3's error classes are kept, so its client
logic still works; the meanings pyhelm3 does not classify are named by `release_error`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyhelm3
import semver
import yaml
from pyhelm3 import errors as helm_errors

from laconic_helm import proc, tools
from laconic_helm.errors import CommandError, ReleaseError, ToolMissingError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# Release records live in Secrets, whatever HELM_DRIVER the operator's shell exports: that is
# where `kube.py` reads and repairs them.
HELM_ENV = {"HELM_DRIVER": "secret"}
STOP_GRACE = 10.0  # seconds helm gets after SIGINT to record `failed` before SIGKILL

_CHART_NOT_FOUND = re.compile(r"chart \"[^\"]+\" (version \"[^\"]+\" )?not found")
_CONNECTION = re.compile(r"read: operation timed out|connect: network is unreachable")


def classify(stderr: str) -> type[helm_errors.Error]:
    """Returns the pyhelm3 error class for helm's stderr, by pyhelm3's own rules and order."""
    text = stderr.lower()
    if "context canceled" in text:
        return helm_errors.CommandCancelledError
    if "etcdserver" in text:  # before "not found": both can appear together
        return helm_errors.ConnectionError
    if "release: not found" in text:
        return helm_errors.ReleaseNotFoundError
    if "failed to render chart" in text or "execution error" in text:
        return helm_errors.FailedToRenderChartError
    if "rendered manifests contain a resource that already exists" in text:
        return helm_errors.ResourceAlreadyExistsError
    if "is invalid" in text:
        return helm_errors.InvalidResourceError
    if _CHART_NOT_FOUND.search(text):
        return helm_errors.ChartNotFoundError
    if _CONNECTION.search(text):
        return helm_errors.ConnectionError
    return helm_errors.Error


# What helm's failures mean, tested in this order; pyhelm3 leaves most of them as plain Error.
_MEANINGS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), meaning)
    for pattern, meaning in (
        (r"another operation \(install/upgrade/rollback\) is in progress",
         "another helm operation holds the release (a pending revision)"),
        (r"has no deployed releases", "no deployed revision to upgrade from"),
        (r"cannot be imported into the current release",
         "an object it renders exists and belongs to something else"),
        (r"apply failed with \d+ conflicts?",
         "server-side apply conflict with another field manager"),
        (r"timed out waiting for the condition|context deadline exceeded",
         "resources did not become ready within the timeout"),
        (r"context canceled", "helm was stopped; the revision is recorded failed"),
    )
)  # fmt: skip


def _tail(stderr: str) -> str:
    """Helm's last `Error:` line (else its last line), on one line. An error that lists its
    causes on the lines after it (a values schema failure names the keys there) keeps them."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    if starts:
        first = starts[-1]
        tail = " ".join(lines[first:]) if lines[first].endswith(":") else lines[first]
    else:
        tail = lines[-1] if lines else "no output"
    return tail if len(tail) <= 400 else tail[:397] + "..."


def release_error(release: str, action: str, exc: helm_errors.Error) -> ReleaseError:
    """Turns a helm failure into one line naming the release, what it means and helm's words."""
    stderr = exc.stderr.decode(errors="replace")
    text = stderr.lower()
    meaning = next((m for pattern, m in _MEANINGS if pattern.search(text)), None)
    if meaning is None:
        if isinstance(exc, helm_errors.ConnectionError):
            meaning = "helm cannot reach the Kubernetes API"
        elif isinstance(exc, helm_errors.FailedToRenderChartError):
            meaning = "the chart does not render with these values"
        elif isinstance(exc, helm_errors.InvalidResourceError):
            meaning = "the API rejected an object it renders"
        else:
            meaning = f"helm {action} failed"
    return ReleaseError(release, f"{meaning}: {_tail(stderr)}")


class ExecCommand(pyhelm3.Command):
    """pyhelm3's command layer, running helm through `proc` instead of a shell."""

    def __init__(self, *, version: semver.Version, grace: float = STOP_GRACE, **kwargs: Any):
        super().__init__(**kwargs)
        self._version = version
        self._grace = grace

    async def run(self, command: list[Any], input: bytes | None = None) -> bytes:
        argv = [self._executable, *(str(part) for part in command)]
        if self._kubeconfig:
            argv += ["--kubeconfig", str(self._kubeconfig)]
        if self._kubecontext:
            argv += ["--kube-context", self._kubecontext]
        done = await proc.run(argv, input=input, check=False, env=HELM_ENV, grace=self._grace)
        if done.returncode == 0:
            return done.stdout
        raise classify(done.stderr.decode(errors="replace"))(
            done.returncode, done.stdout, done.stderr
        )

    def client_version(self) -> semver.Version:
        # pyhelm3 asks for the version synchronously through a shell; `connect` already has it.
        return self._version


@dataclass(frozen=True)
class Helm:
    """A pyhelm3 client bound to one kubeconfig context, and the helm version behind it."""

    client: pyhelm3.Client
    version: semver.Version
    executable: str

    @property
    def major(self) -> int:
        return self.version.major


async def connect(
    *,
    kubeconfig: Path | None,
    context: str | None,
    executable: str | None = None,
    grace: float = STOP_GRACE,
) -> Helm:
    """Finds helm (LACONIC_HELM_HELM overrides PATH), checks its version and returns a client.

    Raises ToolMissingError when helm is absent or older than the driver supports.
    """
    exe = executable or tools.tool_path("helm")
    try:
        done = await proc.run([exe, "version", "--template", "{{.Version}}"], env=HELM_ENV)
    except CommandError as exc:
        raise ToolMissingError(f"{exe}: `helm version` failed: {exc.message}") from None
    text = done.text.strip().removeprefix("v")
    try:
        version = semver.Version.parse(text)
    except ValueError:
        raise ToolMissingError(f"{exe}: unrecognised helm version {text!r}") from None
    if version.major not in tools.SUPPORTED_HELM_MAJORS or (
        version.major == 3 and (version.major, version.minor) < tools.MIN_HELM3
    ):
        raise ToolMissingError(f"{exe}: helm {version} is not supported; use Helm 4 or 3.17+")
    command = ExecCommand(
        version=version, grace=grace, executable=exe, kubeconfig=kubeconfig, kubecontext=context
    )
    return Helm(pyhelm3.Client(command=command, executable=exe), version, exe)


# -- helm processes at work on this host ------------------------------------------------------

_MUTATING = frozenset({"install", "upgrade", "rollback", "uninstall", "delete", "del"})
_VALUED = frozenset({"--namespace", "--kubeconfig", "--kube-context", "--kube-apiserver"})


def _flags(words: Sequence[str]) -> dict[str, str]:
    """The values of helm's namespace and cluster options on a command line, in any spelling."""
    out: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--") and "=" in word:
            key, _, value = word.partition("=")
            out[key] = value
        elif (word in _VALUED or word == "-n") and i + 1 < len(words):
            out["--namespace" if word == "-n" else word] = words[i + 1]
        elif word.startswith("-n") and not word.startswith("--") and len(word) > 2:
            out["--namespace"] = word[2:]
    return out


def targets(argv: Sequence[str], release: str, namespace: str) -> bool:
    """True when a command line is a helm command changing `release` in `namespace` (a
    command that names no namespace counts: it may well mean this one)."""
    if not argv or "helm" not in Path(argv[0]).name:
        return False
    words = list(argv[1:])
    if not _MUTATING & set(words) or release not in words:
        return False
    return _flags(words).get("--namespace", namespace) == namespace


def server_of(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> str | None:
    """The API server a helm command line talks to, as its flags, environment and kubeconfig
    say; None when that cannot be told."""
    flags = _flags(list(argv[1:]))
    server = flags.get("--kube-apiserver") or env.get("HELM_KUBEAPISERVER")
    if server:
        return server.rstrip("/")
    if "--kubeconfig" in flags:
        paths = [flags["--kubeconfig"]]
    elif env.get("KUBECONFIG"):
        paths = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [str(Path(env.get("HOME", "/")) / ".kube" / "config")]
    contexts: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    current = None
    for path in paths:
        try:
            doc = yaml.safe_load((cwd / Path(path).expanduser()).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        current = current or doc.get("current-context")
        for entry in doc.get("contexts") or []:
            contexts.setdefault(entry.get("name"), entry.get("context") or {})
        for entry in doc.get("clusters") or []:
            clusters.setdefault(entry.get("name"), entry.get("cluster") or {})
    context = flags.get("--kube-context") or env.get("HELM_KUBECONTEXT") or current
    found = (clusters.get((contexts.get(context) or {}).get("cluster")) or {}).get("server")
    return found.rstrip("/") if isinstance(found, str) else None


def _environ(proc_dir: Path) -> dict[str, str]:
    try:
        raw = (proc_dir / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def live_helm_pids(release: str, namespace: str, *, server: str | None = None) -> tuple[int, ...]:
    """Returns the pids of helm processes on this host changing `release` in `namespace`.

    With `server`, a helm that evidently talks to another API server (another cluster with a
    release of the same name) does not count; one whose server cannot be told does.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        argv = [a for a in argv if a]
        if not targets(argv, release, namespace):
            continue
        if server is not None:
            try:
                cwd = (entry / "cwd").resolve(strict=True)
            except OSError:
                cwd = Path("/")
            theirs = server_of(argv, _environ(entry), cwd)
            if theirs is not None and theirs != server.rstrip("/"):
                continue
        found.append(int(entry.name))
    return tuple(sorted(found))
