"""Ownership: the record that says this tool made (or adopted) a cluster, and judging by it.

The record is written under the cluster's state folder *before* `kind create` runs and completed
after it, so even a create killed half-way is known to be ours. Once the cluster answers, the
record is also kept in it (ConfigMap kube-system/laconic-helm-cluster), so another user's run, or
one after the state folder was lost, still knows the cluster as ours. A cluster with no record,
or whose node containers are not the recorded ones, belongs to someone else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from laconic_helm import __version__, paths
from laconic_helm.cluster.nodes import parse_time
from laconic_helm.kube import Kube, ObjectRef

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from pathlib import Path

    from laconic_helm.cluster.access import ClusterAccess
    from laconic_helm.cluster.nodes import Node
    from laconic_helm.cluster.observe import ClusterState

log = logging.getLogger(__name__)

_RECORD_VERSION = 1
# The copy of the ownership record kept in the cluster; it goes when the cluster goes.
CLUSTER_RECORD = ObjectRef("v1", "ConfigMap", "laconic-helm-cluster", "kube-system")
_SYSTEM_NAMESPACE_WAIT = 60.0  # seconds a new API server may take to create kube-system
_RECORD_KEY = "record.json"

RecordStatus = Literal["creating", "created", "adopted"]


def cluster_dir(name: str) -> Path:
    """Returns the state folder of cluster `name`: record, kind config, kubeconfig (0700)."""
    return paths.state_dir() / "clusters" / name


@dataclass(frozen=True)
class Record:
    """What this tool knows about a cluster it created (or was told to adopt)."""

    name: str
    status: RecordStatus
    started_at: str  # UTC ISO time just before `kind create` ran (or of the adoption)
    node_ids: tuple[str, ...] = ()  # full docker IDs of the nodes once created
    config_sha256: str = ""
    patches_sha256: str = ""
    tool_version: str = __version__
    version: int = _RECORD_VERSION

    @property
    def started(self) -> datetime:
        return parse_time(self.started_at)


def record_path(name: str) -> Path:
    return cluster_dir(name) / "record.json"


def read_record(name: str) -> Record | None:
    """Returns the record of cluster `name`, or None when there is none (or it is unreadable)."""
    try:
        text = record_path(name).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: unreadable cluster record (%s)", record_path(name), exc)
        return None
    return _parse_record(text, str(record_path(name)))


def _parse_record(text: str, where: str) -> Record | None:
    try:
        doc = json.loads(text)
        return Record(
            name=doc["name"],
            status=doc["status"],
            started_at=doc["started_at"],
            node_ids=tuple(doc.get("node_ids", ())),
            config_sha256=doc.get("config_sha256", ""),
            patches_sha256=doc.get("patches_sha256", ""),
            tool_version=doc.get("tool_version", ""),
            version=int(doc.get("version", _RECORD_VERSION)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        # A damaged record proves nothing: the cluster is then treated as not ours.
        log.warning("%s: unreadable cluster record (%s)", where, exc)
        return None


def _record_text(record: Record) -> str:
    return json.dumps(asdict(record), indent=2, sort_keys=True) + "\n"


def write_record(record: Record) -> None:
    paths.write_private(record_path(record.name), _record_text(record).encode())


def record_manifest(record: Record) -> dict[str, Any]:
    """Returns the ConfigMap holding `record` in the cluster itself."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CLUSTER_RECORD.name,
            "namespace": CLUSTER_RECORD.namespace,
            "labels": {"app.kubernetes.io/managed-by": "laconic-helm"},
        },
        "data": {_RECORD_KEY: _record_text(record)},
    }


async def read_cluster_record(k: Kube) -> Record | None:
    """Returns the record kept in the cluster, or None when there is none (or it is damaged)."""
    live = await k.get_object(CLUSTER_RECORD)
    text = ((live or {}).get("data") or {}).get(_RECORD_KEY)
    return _parse_record(text, f"ConfigMap {CLUSTER_RECORD}") if text else None


async def ensure_records(state: ClusterState, access: ClusterAccess) -> None:
    """Keeps the finished record of a cluster of ours in both places: in the cluster, so other
    users and a rebuilt state folder know it; in the state folder, restored from the cluster."""
    record = state.record
    if not state.owned or record is None or record.status == "creating":
        return
    if read_record(state.name) is None:
        write_record(record)
        log.info("cluster %s: restored its record from the cluster", state.name)
    k = Kube.connect(access.kubeconfig, access.context)
    if await read_cluster_record(k) is None:
        # An API server that has just started creates kube-system a moment after it answers.
        system = ObjectRef("v1", "Namespace", CLUSTER_RECORD.namespace or "kube-system")
        deadline = time.monotonic() + _SYSTEM_NAMESPACE_WAIT
        while await k.get_object(system) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await k.create_object(CLUSTER_RECORD, record_manifest(record))


def forget_cluster(name: str) -> None:
    """Removes the state folder of cluster `name` (record, configs, kubeconfig)."""
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


def judge_ownership(record: Record | None, nodes: Sequence[Node]) -> tuple[bool, str]:
    """Decides whether this tool made the cluster whose node containers are `nodes`.

    A finished record owns exactly the containers it lists (a subset may be left after a delete
    was killed). An unfinished record owns containers created after it was written: those are
    the killed create's, while older ones were someone else's before we began.
    """
    if record is None:
        return False, "laconic-helm has no record of creating it"
    if record.status == "creating":
        older = [n.name for n in nodes if n.created < record.started]
        if older:
            return False, (
                f"its node containers ({', '.join(older)}) predate laconic-helm's create "
                f"of {record.started_at}"
            )
        return True, f"laconic-helm began creating it at {record.started_at}"
    ids = {n.id for n in nodes}
    if ids and ids <= set(record.node_ids):
        verb = "adopted" if record.status == "adopted" else "created"
        return True, f"laconic-helm {verb} it at {record.started_at}"
    return False, (
        f"its node containers are not the ones laconic-helm {record.status} at "
        f"{record.started_at} (it was re-made by something else)"
    )
