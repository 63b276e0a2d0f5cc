"""Free space of the node's data volumes, as the node itself sees it (`df` in its container,
whatever the volume's type): a full ledger disk is the most common way an agave node dies."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from laconic_helm.errors import ClusterError
from laconic_helm.output import human_bytes

if TYPE_CHECKING:
    from laconic_helm.kube import Kube

# The agave chart's volumes whose filling stops the node.
DATA_VOLUMES = ("ledger", "accounts", "snapshots")
LOW_FRACTION = 0.10  # below this share free, status warns


@dataclass(frozen=True)
class VolumeSpace:
    """One mounted data volume of a pod: its size and free bytes, or why they are unknown."""

    pod: str
    volume: str
    path: str
    total: int | None = None
    free: int | None = None
    problem: str | None = None

    @property
    def low(self) -> bool:
        return bool(self.total) and self.free is not None and self.free < LOW_FRACTION * self.total

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "low": self.low}

    def line(self) -> str:
        where = f"volume {self.volume} ({self.path} in {self.pod})"
        if self.total is None or self.free is None:
            return f"? {where}: free space unknown ({self.problem})"
        text = f"{where}: {human_bytes(self.free)} free of {human_bytes(self.total)}"
        if self.low:
            return f"! {text}: under {LOW_FRACTION:.0%} free, the node stops when it is full"
        return f"✓ {text}"


def parse_df(text: str) -> tuple[int, int]:
    """(total, free) bytes from POSIX `df -P -k PATH` output; ValueError when it is not that."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"not df -P output: {text!r}")
    fields = lines[-1].split()
    total_kib, free_kib = int(fields[1]), int(fields[3])
    return total_kib * 1024, free_kib * 1024


async def volume_space(kube: Kube, pod: dict[str, Any]) -> list[VolumeSpace]:
    """The data volumes mounted in a running pod, each measured inside its container."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    found = []
    for container in pod["spec"]["containers"]:
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in DATA_VOLUMES:
                continue
            path = mount["mountPath"]
            try:
                out = await kube.exec_output(
                    namespace, name, container["name"], ["df", "-P", "-k", path]
                )
                total, free = parse_df(out)
            except (ClusterError, ValueError, IndexError) as exc:
                found.append(VolumeSpace(name, mount["name"], path, problem=str(exc)))
                continue
            found.append(VolumeSpace(name, mount["name"], path, total, free))
    return found
