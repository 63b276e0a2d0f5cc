"""What the host gives the node: the kernel settings and memlock limit agave documents for
validators, and the cgroup version the kubelet runs on.

agave-validator (the chart's rpc and validator modes) wants large UDP buffers, a million memory
maps and open files, and locked memory; Kubernetes has no pod field for any of them, so they
come from the host under the kind node. Nothing here changes the host: each shortfall is
reported with the command that fixes it. Everything is read under a proc root (/proc, or
$LACONIC_HELM_PROC for tests), so the decisions can be tried on a fake tree.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from laconic_helm.errors import UserError
from laconic_helm.spec import load_values_file

if TYPE_CHECKING:
    from laconic_helm.output import Reporter
    from laconic_helm.spec import Cluster, Release, Spec

PROC_ENV = "LACONIC_HELM_PROC"  # tests only: a fake proc tree, so a host can be made short
UDP_BUFFER = 134_217_728
# agave's "System Tuning" for validators; its docs keep them in this file.
SYSCTLS = {
    "net.core.rmem_max": UDP_BUFFER,
    "net.core.rmem_default": UDP_BUFFER,
    "net.core.wmem_max": UDP_BUFFER,
    "net.core.wmem_default": UDP_BUFFER,
    "vm.max_map_count": 1_000_000,
    "fs.nr_open": 1_000_000,
}
SYSCTL_FILE = "/etc/sysctl.d/21-agave-validator.conf"
MIN_MEMLOCK = 2_000_000_000  # bytes: agave's service example sets LimitMEMLOCK=2000000000
LIMITS_FILE = "/etc/security/limits.d/90-agave.conf"
TUNED_MODES = ("rpc", "validator")  # test mode runs solana-test-validator, which needs none
CGROUP_V1_REFUSED_FROM = (1, 35)  # kubelet refuses cgroup v1 unless failCgroupV1 is false
AGAVE = "agave rpc/validator"
_DOCKER_MEMLOCK = (
    'for the kind nodes: "default-ulimits": {"memlock": {"Name": "memlock", "Soft": -1, '
    '"Hard": -1}} in /etc/docker/daemon.json, then systemctl restart docker'
)
_CGROUP_FIX = (
    "add {kind: KubeletConfiguration, failCgroupV1: false} to the spec's "
    "cluster.kindPatches.kubeadm (before the cluster is created)"
)
_CGROUP_V2 = "or boot the host on cgroup v2 (kernel argument systemd.unified_cgroup_hierarchy=1)"


@dataclass(frozen=True)
class Setting:
    """One host setting the node depends on, as read, with the command that fixes it.

    `value` is what /proc shows (None: unreadable); `ok` is None when it cannot be told;
    `also` is what else to do (make it last, or the alternative).
    """

    name: str
    value: str | None
    needed_by: str
    wanted: str
    ok: bool | None
    fix: str
    also: str

    def detail(self) -> str:
        if self.ok:
            return f"ok for {self.needed_by} ({self.wanted})"
        maybe = "may be short: " if self.ok is None else ""
        return f"{maybe}{self.needed_by} wants {self.wanted}; fix: {self.fix}; {self.also}"

    def line(self) -> str:
        mark = {True: "✓", False: "!", None: "?"}[self.ok]
        return f"{mark} {self.name} = {self.value or 'unreadable'}: {self.detail()}"

    def shortfall(self) -> str:
        return f"{self.name} is {self.value or 'unreadable'}, wanted {self.wanted}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def proc_root() -> Path:
    """Returns /proc, or $LACONIC_HELM_PROC (set only by tests, to fake a host)."""
    return Path(os.environ.get(PROC_ENV) or "/proc")


def read_sysctl(proc: Path, name: str) -> int | None:
    try:
        return int((proc / "sys" / name.replace(".", "/")).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_memlock(proc: Path) -> str | None:
    """Returns this process's hard RLIMIT_MEMLOCK as /proc shows it: bytes or "unlimited"."""
    try:
        lines = (proc / "self" / "limits").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Max locked memory"):
            return line.split()[4]  # Max locked memory <soft> <hard> bytes
    return None


def cgroup_version(proc: Path) -> int | None:
    """Returns 2 when /sys/fs/cgroup is a cgroup2 mount, 1 when it is anything else (v1, or
    hybrid, which the kubelet treats as v1), None when it is not mounted or unreadable."""
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last mount at the path is the one seen (over-mounts come later)
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 4 and parts[4] == "/sys/fs/cgroup" and rest:
            found = 2 if rest.split()[0] == "cgroup2" else 1
    return found


def agave_settings(proc: Path) -> list[Setting]:
    """Reads the sysctls and the memlock limit agave documents for validators."""
    found = []
    for name, want in SYSCTLS.items():
        value = read_sysctl(proc, name)
        found.append(
            Setting(
                name,
                None if value is None else str(value),
                AGAVE,
                f">= {want}",
                None if value is None else value >= want,
                fix=f"sysctl -w {name}={want}",
                also=f"to keep it: echo '{name}={want}' >> {SYSCTL_FILE}",
            )
        )
    memlock = read_memlock(proc)
    ok = (
        None
        if memlock is None
        else memlock == "unlimited" or (memlock.isdigit() and int(memlock) >= MIN_MEMLOCK)
    )
    found.append(
        Setting(
            "memlock",
            memlock,
            AGAVE,
            f"a hard limit of unlimited or >= {MIN_MEMLOCK} bytes",
            ok,
            fix=f"echo '* - memlock unlimited' >> {LIMITS_FILE}, then log in again",
            also=_DOCKER_MEMLOCK,
        )
    )
    return found


def kubernetes_version(cluster: Cluster) -> tuple[int, int] | None:
    """Returns the Kubernetes version the node image's tag names (kindest/node:v1.35.0)."""
    match = re.search(r":v(\d+)\.(\d+)", cluster.node_image or "")
    return (int(match[1]), int(match[2])) if match else None


def allows_cgroup_v1(cluster: Cluster) -> bool:
    return any(
        p.get("kind") == "KubeletConfiguration" and p.get("failCgroupV1") is False
        for p in cluster.kind_patches.kubeadm
    )


def cgroup_setting(proc: Path, cluster: Cluster | None) -> Setting:
    """Judges the host's cgroup version against the kubelet the cluster runs (None: doctor,
    which has no spec, so a v1 host is reported as a possible problem)."""
    version = cgroup_version(proc)
    ok: bool | None = True
    if version is None:
        ok = None
    elif version == 1 and (cluster is None or not allows_cgroup_v1(cluster)):
        k8s = kubernetes_version(cluster) if cluster is not None else None
        ok = None if k8s is None else k8s < CGROUP_V1_REFUSED_FROM
    value = f"v{version}" if version else None
    return Setting(
        "cgroup",
        value,
        "kubelet 1.35+",
        "cgroup v2, or failCgroupV1: false in the kind config",
        ok,
        fix=_CGROUP_FIX,
        also=_CGROUP_V2,
    )


def _chart_file(chart: Path, name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load((chart / name).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _agave_mode(release: Release) -> str | None:
    """The agave chart's `mode` the release runs: inline values, then the values files from the
    last, then the chart's default; None for a release of another chart."""
    chart = Path(release.chart)
    if _chart_file(chart, "Chart.yaml").get("name") != "agave":
        return None
    layers = [
        release.values,
        *(load_values_file(p) for p in reversed(release.values_files)),
        _chart_file(chart, "values.yaml"),
    ]
    return next((layer["mode"] for layer in layers if "mode" in layer), None)


def tuned_releases(spec: Spec) -> list[str]:
    """Names the releases running agave-validator (rpc or validator mode), as `name (mode)`."""
    modes = {r.name: _agave_mode(r) for r in spec.releases}
    return [f"{name} ({mode})" for name, mode in modes.items() if mode in TUNED_MODES]


def settings_for(spec: Spec, proc: Path | None = None) -> list[Setting]:
    """Returns the host settings the spec depends on: agave's when a release runs
    agave-validator, and for kind the cgroup version when it is a problem (or beside agave's)."""
    proc = proc or proc_root()
    found = agave_settings(proc) if tuned_releases(spec) else []
    if spec.cluster.provider == "kind":
        cgroup = cgroup_setting(proc, spec.cluster)
        if found or cgroup.ok is not True:
            found.append(cgroup)
    return found


def check_tuning(spec: Spec, reporter: Reporter, *, strict: bool, proc: Path | None = None) -> None:
    """Reports the host settings the spec depends on as the `host` step, a warning when one is
    short or cannot be told; with `strict` (--strict-host) a short one raises UserError naming
    each. Runs before the lock and every other step, so a refused run has changed nothing."""
    settings = settings_for(spec, proc)
    if not settings:
        return
    off = [s for s in settings if s.ok is not True]
    short = [s for s in off if s.ok is False]
    with reporter.step("host") as rec:
        rec.data["settings"] = [s.as_dict() for s in settings]
        for setting in off:
            reporter.line(f"  {setting.line()}")
        if strict and short:
            raise UserError(
                f"--strict-host: {'; '.join(s.shortfall() for s in short)}",
                hint="each setting's line above gives the command that fixes it",
            )
        names = ", ".join(s.name for s in off)
        rec.done(
            "warning" if off else "ok",
            f"not as wanted: {names} (--strict-host refuses a short one)" if off else "tuned",
        )
