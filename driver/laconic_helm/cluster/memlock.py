"""The high-memlock containerd runtime: its base OCI spec, the containerd patch that adds it to a
node, and whether a running node has it.

A node's containerd runtimes are fixed when kind creates the node, so the runtime goes into the
kind config and is only checked afterwards.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from laconic_helm import docker, paths
from laconic_helm.cluster.record import cluster_dir

if TYPE_CHECKING:
    from pathlib import Path

MEMLOCK_RUNTIME = "high-memlock"  # containerd runtime name = RuntimeClass name and handler
MEMLOCK_SPEC_IN_NODE = "/etc/laconic-helm/high-memlock-spec.json"
RLIM_INFINITY = 2**64 - 1
MEMLOCK_NOFILE = 1048576


def memlock_spec_path(name: str) -> Path:
    """Returns the host file holding the high-memlock runtime's base OCI spec for `name`."""
    return cluster_dir(name) / paths.MEMLOCK_SPEC_NAME


def memlock_base_spec() -> dict[str, Any]:
    """Returns the base OCI spec of the high-memlock runtime: runc's defaults, rlimits raised.

    Kubernetes has no pod field for rlimits; containerd starts every container of a runtime from
    its base spec, so this is where memlock and open files are raised for the pods that ask.
    """
    caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    nsd = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [
                {"type": "RLIMIT_MEMLOCK", "hard": RLIM_INFINITY, "soft": RLIM_INFINITY},
                {"type": "RLIMIT_NOFILE", "hard": MEMLOCK_NOFILE, "soft": MEMLOCK_NOFILE},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": dest, "type": kind, "source": source, "options": options}
            for dest, kind, source, options in (
                ("/proc", "proc", "proc", nsd),
                ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                (
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
                ),
                ("/dev/shm", "tmpfs", "shm", [*nsd, "mode=1777", "size=65536k"]),
                ("/dev/mqueue", "mqueue", "mqueue", nsd),
                ("/sys", "sysfs", "sysfs", [*nsd, "ro"]),
                ("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            )
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": "/default",
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def memlock_containerd_patch() -> str:
    """Returns the containerd config patch adding the high-memlock runtime (config version 2).

    systemd cgroups as kind's own runc runtime uses, or the kubelet could not place its pods.
    """
    table = f'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{MEMLOCK_RUNTIME}'
    return (
        f"[{table}]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f'  base_runtime_spec = "{MEMLOCK_SPEC_IN_NODE}"\n'
        f"[{table}.options]\n"
        "  SystemdCgroup = true\n"
    )


def write_memlock_spec(name: str) -> Path:
    """Writes the base spec where kind mounts it into cluster `name`'s node; returns the file."""
    path = memlock_spec_path(name)
    paths.write_private(path, (json.dumps(memlock_base_spec(), indent=2) + "\n").encode())
    return path


async def node_runs_memlock(node: str) -> bool | None:
    """Whether node container `node`'s containerd has the runtime; None when it cannot tell."""
    done = await docker.run("exec", node, "cat", "/etc/containerd/config.toml", check=False)
    if done.returncode != 0:
        return False if "No such file" in done.stderr.decode(errors="replace") else None
    return bool(re.search(rf'runtimes\.(?:"{MEMLOCK_RUNTIME}"|{MEMLOCK_RUNTIME})\]', done.text))
