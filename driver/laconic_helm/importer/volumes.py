"""The agave service's data volumes as the agave chart's volumes (hostPath at the same node
paths, so the ledger in place is used), and the keypair files in them, named by path."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laconic_helm.errors import UserError
from laconic_helm.importer.cluster import node_path
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import Service, SoDeployment, absolute, as_list

# Where the agave image keeps its data, and the agave chart volume each folder becomes.
DATA_VOLUMES = {
    "/data/config": "config",
    "/data/ledger": "ledger",
    "/data/accounts": "accounts",
    "/data/snapshots": "snapshots",
    "/data/log": "log",
}
REAL_NODE_VOLUMES = ("ledger", "accounts", "snapshots", "log", "config")
TEST_VOLUMES = ("ledger", "log", "config")
IDENTITY_IN_CONTAINER = "/data/config/validator-identity.json"
VOTE_IN_CONTAINER = "/data/config/vote-account-keypair.json"


def volume_mounts(service: Service, found: Findings) -> dict[str, str]:
    """Named volume -> container path, from the service's short-syntax volume entries."""
    mounts: dict[str, str] = {}
    for i, entry in enumerate(as_list(service.doc.get("volumes"), service.key("volumes"))):
        where = service.key(f"volumes[{i}]")
        if not isinstance(entry, str):
            found.add("ignored", where, "long volume syntax, which laconic-so does not read")
            continue
        source, _, rest = entry.partition(":")
        target = rest.split(":", 1)[0]
        if source.startswith(("/", ".", "~")):
            found.add(
                "unmapped", where, f"host file bind {source} -> {target} (a ConfigMap under "
                "laconic-so): the agave chart mounts no such file",
            )  # fmt: skip
            continue
        mounts[source] = target
    return mounts


@dataclass(frozen=True)
class Volume:
    name: str  # the compose named volume
    host: str | None  # folder on the host; None: a laconic-so provisioner claim
    node: str | None  # the same folder inside the kind node


def service_volumes(
    so: SoDeployment, service: Service, cluster: Mapping[str, Any], found: Findings
) -> dict[str, Volume]:
    """Container path -> the volume there, with its host folder and node path."""
    spec_volumes = so.section("volumes")
    configmaps = so.section("configmaps")
    out: dict[str, Volume] = {}
    for name, target in volume_mounts(service, found).items():
        if name in configmaps:
            found.add(
                "unmapped", so.spec_key(f"configmaps.{name}"), f"ConfigMap at {target} in "
                f"{service.name}: the agave chart mounts no ConfigMap",
            )  # fmt: skip
            continue
        path = spec_volumes.get(name)
        if not path:
            out[target] = Volume(name, None, None)
            continue
        host = absolute(str(path), so.dir)
        inside = node_path(host, cluster)
        if inside is None:
            root = so.mount_root
            under_root = root and host.startswith(root.rstrip("/") + "/")
            inside = "/mnt/" + (os.path.relpath(host, root) if root and under_root else name)
            found.add(
                "changed", so.spec_key(f"volumes.{name}"), f"{host} is not mounted into the kind "
                f"node: its data lives inside the node container at {inside}, as under "
                "laconic-so, and goes with the cluster",
            )  # fmt: skip
        out[target] = Volume(name, host, inside)
    return out


def keypair(
    what: str,
    container_path: str,
    volumes: Mapping[str, Volume],
    error: Callable[[str], UserError],
    found: Findings,
) -> tuple[Path, int | None]:
    """The host file of a keypair the node reads, and its group (None when the file is not on
    this host: an import may run off the node's host, the deploy's spec check then refuses
    until the file is there)."""
    for target, volume in sorted(volumes.items(), key=lambda kv: len(kv[0]), reverse=True):
        prefix = target.rstrip("/") + "/"
        if container_path.startswith(prefix) and volume.host:
            path = Path(volume.host) / container_path.removeprefix(prefix)
            break
    else:
        raise error(
            f"the {what} keypair {container_path} is not in a volume with a host path, so "
            "laconic-helm cannot make a Secret of it; give that volume a host path in spec.yml"
        )
    try:
        info = path.stat()
    except OSError:
        found.add(
            "assumed", str(path), f"the {what} keypair ({container_path} in the node, volume "
            f"{volume.name}) is not on this host; the spec names it there, and `laconic-helm "
            "deploy` refuses to start until it is (import on the node's host to also carry over "
            "its group as fsGroup; laconic-so's rpc mode made the identity at first start)",
        )  # fmt: skip
        return path, None
    if not path.is_file():
        raise UserError(f"{path}: the {what} keypair is not a file")
    return path, info.st_gid


def chart_volumes(
    so: SoDeployment, service: Service, volumes: Mapping[str, Volume], mode: str, found: Findings
) -> dict[str, Any]:
    names = REAL_NODE_VOLUMES if mode != "test" else TEST_VOLUMES
    chart: dict[str, Any] = {}
    for target, volume in volumes.items():
        name = DATA_VOLUMES.get(target)
        if name is None or name not in names:
            found.add("unmapped", service.key("volumes"), f"{volume.name} at {target}: the agave "
                      f"chart has no volume there in {mode} mode")  # fmt: skip
        elif volume.node is None:
            claim = f"{so.app}-{volume.name}"
            chart[name] = {"type": "existingClaim", "existingClaim": claim}
            found.add(
                "changed", so.spec_key(f"volumes.{volume.name}"), f"no host path: the data is "
                f"in laconic-so's claim {claim}, which the node keeps using (same namespace)",
            )  # fmt: skip
        else:
            chart[name] = {"type": "hostPath", "hostPath": volume.node}
    # A folder without a volume lived in the container's own layer: emptyDir is the same.
    return {name: chart.get(name, {"type": "emptyDir"}) for name in names}
