"""Making the change: carrying out the cluster plan, and the whole ensure and delete runs.

`apply_cluster` re-checks the node containers before each change, since another tool may have
worked on the cluster since it was observed. Every action is safe to repeat, so a run killed
half-way is finished by the next one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from laconic_helm import docker, handoff, paths, proc
from laconic_helm.actions import Action
from laconic_helm.cluster.access import ClusterAccess, ensure_kubeconfig
from laconic_helm.cluster.kindconfig import patches_digest, render_kind_config
from laconic_helm.cluster.memlock import write_memlock_spec
from laconic_helm.cluster.nodes import list_nodes
from laconic_helm.cluster.observe import ClusterState, observe_cluster
from laconic_helm.cluster.planning import check_converged, plan_cluster, plan_delete_cluster
from laconic_helm.cluster.record import (
    Record,
    cluster_dir,
    ensure_records,
    forget_cluster,
    record_path,
    write_record,
)
from laconic_helm.errors import ClusterError, CommandError
from laconic_helm.tools import tool_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from laconic_helm.spec import Cluster

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _check_unchanged(state: ClusterState) -> None:
    """Raises ClusterError when the node containers changed since `state` was observed."""
    now = {n.id for n in await list_nodes(state.name)}
    if now != {n.id for n in state.nodes}:
        raise ClusterError(
            f"cluster {state.name}: its node containers changed while laconic-helm was planning",
            hint="another tool is working on it; re-run when it is done",
        )


async def _kind_delete(name: str) -> None:
    await proc.run([tool_path("kind"), "delete", "cluster", "--name", name])


async def _kind_create(cluster: Cluster) -> None:
    """Writes the config and the record (status creating), runs `kind create`, completes it."""
    folder = cluster_dir(cluster.name)
    memlock = write_memlock_spec(cluster.name) if cluster.high_memlock else None
    transfer = folder / handoff.FOLDER_NAME
    paths.private_dir(transfer)
    text = render_kind_config(cluster, memlock_spec=memlock, transfer=transfer)
    config = folder / "kind-config.yaml"
    paths.write_private(config, text.encode())
    digest = hashlib.sha256(text.encode()).hexdigest()
    record = Record(
        cluster.name, "creating", _now(), config_sha256=digest,
        patches_sha256=patches_digest(cluster),
    )  # fmt: skip
    write_record(record)  # before kind runs: a killed create is still known to be ours
    try:
        await proc.run(
            [
                tool_path("kind"),
                "create",
                "cluster",
                "--name",
                cluster.name,
                "--config",
                str(config),
            ]
        )
    except CommandError as exc:
        if not await list_nodes(cluster.name):
            record_path(cluster.name).unlink(missing_ok=True)
        raise ClusterError(
            f"cluster {cluster.name}: kind create failed: {exc.message}",
            hint="re-run: a half-made cluster of laconic-helm's is rebuilt",
        ) from exc
    nodes = await list_nodes(cluster.name)
    ids = tuple(n.id for n in nodes)
    write_record(replace(record, status="created", node_ids=ids))


async def _start_node(node: str) -> None:
    await docker.run("start", node)


def _adopt(state: ClusterState) -> None:
    ids = tuple(n.id for n in state.nodes)
    write_record(Record(state.name, "adopted", _now(), ids))


async def apply_cluster(cluster: Cluster, state: ClusterState, actions: Sequence[Action]) -> None:
    """Carries out `actions` from `plan_cluster` in order, re-checking before each change.

    Each action is safe to repeat: a delete of an absent cluster succeeds, a create is preceded
    by its record, a start of a running node is a no-op.
    """
    for action in actions:
        log.info("%s", action.line())
        if action.verb == "delete-cluster":
            await _check_unchanged(state)
            await _kind_delete(cluster.name)
            record_path(cluster.name).unlink(missing_ok=True)
        elif action.verb == "create-cluster":
            if await list_nodes(cluster.name):
                raise ClusterError(
                    f"cluster {cluster.name}: has node containers just before kind create",
                    hint="another tool may be making it; re-run when it is done",
                )
            await _kind_create(cluster)
        elif action.verb == "start-node":
            await _start_node(action.target)
        elif action.verb == "adopt-cluster":
            await _check_unchanged(state)
            _adopt(state)
        else:
            raise ValueError(f"not a cluster action: {action.verb}")


@dataclass(frozen=True)
class ClusterResult:
    """What `ensure_cluster` did and where the cluster now stands."""

    actions: tuple[Action, ...]
    state: ClusterState
    access: ClusterAccess

    @property
    def changed(self) -> bool:
        return bool(self.actions)


async def ensure_cluster(
    cluster: Cluster,
    *,
    recreate: bool = False,
    adopt: bool = False,
    state: ClusterState | None = None,
) -> ClusterResult:
    """Ensures the cluster exists, is healthy and matches the spec; repeats do nothing.

    The plan runs first, so a refusal raises UserError before anything is touched. The host
    checks (ports, mount sources, kube context) are the caller's, on the same observation:
    `preflight.check_host`, which a deploy's preflight runs. `state` is a fresh observation
    when the caller already has one.
    """
    state = state or await observe_cluster(cluster)
    actions = plan_cluster(cluster, state, recreate=recreate, adopt=adopt)
    return await converge_cluster(cluster, state, actions)


async def converge_cluster(
    cluster: Cluster, state: ClusterState, actions: Sequence[Action]
) -> ClusterResult:
    """Carries out planned cluster actions, then checks the cluster is as specified and keeps
    the kubeconfig and ownership records current (the deploy's cluster step)."""
    if actions:
        await apply_cluster(cluster, state, actions)
        state = await observe_cluster(cluster)
    check_converged(cluster, state)
    access = await ensure_kubeconfig(cluster, state)
    if cluster.provider == "kind":
        await ensure_records(state, access)
    return ClusterResult(tuple(actions), state, access)


async def delete_cluster(cluster: Cluster) -> list[Action]:
    """Deletes the cluster when this tool created (or adopted) it; absent counts as done.

    The driver's state for it (record, kind config, kubeconfig) goes with it.
    """
    state = await observe_cluster(cluster)
    actions = plan_delete_cluster(cluster, state)
    if actions:
        await _check_unchanged(state)
        await _kind_delete(cluster.name)
    forget_cluster(cluster.name)
    return actions
