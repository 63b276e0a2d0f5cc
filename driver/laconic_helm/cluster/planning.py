"""What must change: how a live cluster differs from the spec, and the actions that fix it.

All pure: the decisions are taken on an observed ClusterState. Ports, mounts, the node image
and the containerd runtime are fixed when kind creates a cluster, so a cluster that differs is
never patched: it is rebuilt, and only when this tool created it and the operator asked. A
cluster that is not ours is never deleted or rebuilt without an explicit flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from laconic_helm.actions import Action
from laconic_helm.cluster.kindconfig import patches_digest
from laconic_helm.cluster.memlock import MEMLOCK_RUNTIME
from laconic_helm.cluster.nodes import api_binding
from laconic_helm.cluster.observe import stopped_problem
from laconic_helm.errors import ClusterError, UserError

if TYPE_CHECKING:
    from laconic_helm.cluster.nodes import PortBinding
    from laconic_helm.cluster.observe import ClusterState
    from laconic_helm.spec import Cluster

STEP = "cluster"


def differences(cluster: Cluster, state: ClusterState) -> list[str]:
    """Returns, one phrase each, how the live cluster differs from the spec; empty if it fits.

    What the spec asks for must be there as asked. Host ports published beyond the spec count
    too (they hold ports the operator thinks free); extra mounts and kind's own do not.
    """
    cp = state.control_plane
    if cp is None:
        return []
    found: list[str] = []
    if cluster.node_image and cp.image != cluster.node_image:
        found.append(f"node image is {cp.image}, the spec asks for {cluster.node_image}")
    wanted_ports = {(p.host_port, p.protocol): p for p in cluster.ports}
    api = api_binding(cp.ports)
    published: dict[tuple[int, str], list[PortBinding]] = {}
    for b in cp.ports:
        if b == api and (b.host_port, b.protocol) not in wanted_ports:
            continue
        published.setdefault((b.host_port, b.protocol), []).append(b)
    for key, p in wanted_ports.items():
        want = f"{p.listen_address}:{p.host_port} -> node port {p.container_port}"
        have = published.get(key, [])
        if not have:
            found.append(f"host port {p.host_port}/{p.protocol} is not published (spec: {want})")
        elif not any(
            b.host_ip == p.listen_address and b.container_port == p.container_port for b in have
        ):
            shown = ", ".join(str(b) for b in have)
            found.append(
                f"host port {p.host_port}/{p.protocol} is published as {shown}; spec: {want}"
            )
    for key, have in sorted(published.items()):
        if key not in wanted_ports:
            shown = ", ".join(str(b) for b in have)
            found.append(f"host port {key[0]}/{key[1]} is published ({shown}) but not in the spec")
    mounts = {m.destination: m for m in cp.mounts}
    for m in cluster.mounts:
        have_mount = mounts.get(m.container_path)
        if have_mount is None:
            found.append(f"mount {m.container_path} is absent (spec: {m.host_path})")
            continue
        if Path(have_mount.source) != Path(m.host_path):
            found.append(
                f"mount {m.container_path} comes from {have_mount.source}, "
                f"the spec asks for {m.host_path}"
            )
        if have_mount.read_only != m.read_only:
            mode = "read-only" if have_mount.read_only else "writable"
            found.append(f"mount {m.container_path} is {mode}, the spec asks for the opposite")
        if have_mount.propagation != m.propagation:
            found.append(
                f"mount {m.container_path} has propagation {have_mount.propagation}, "
                f"the spec asks for {m.propagation}"
            )
    record = state.record  # an adopted cluster's patches are unknown: they are not judged
    if (
        state.owned
        and record is not None
        and record.status != "adopted"
        and record.patches_sha256 != patches_digest(cluster)
    ):
        found.append("the kind patches differ from the ones the cluster was created with")
    if cluster.high_memlock and state.memlock_runtime is False:
        found.append(f"the containerd runtime {MEMLOCK_RUNTIME} is not configured in the node")
    if state.node_labels is not None:
        for key, value in sorted(cluster.node_labels.items()):
            have_label = state.node_labels.get(key)
            if have_label is None:
                found.append(f"node label {key}={value} is missing")
            elif have_label != value:
                found.append(f"node label {key} is {have_label!r}, the spec asks for {value!r}")
    return found


def _create(cluster: Cluster) -> Action:
    parts = [f"{len(cluster.ports)} port mappings", f"{len(cluster.mounts)} mounts"]
    if cluster.node_image:
        parts.append(f"image {cluster.node_image}")
    if cluster.high_memlock:
        parts.append(f"{MEMLOCK_RUNTIME} runtime")
    return Action(STEP, "create-cluster", cluster.name, ", ".join(parts))


def plan_cluster(
    cluster: Cluster, state: ClusterState, *, recreate: bool = False, adopt: bool = False
) -> list[Action]:
    """Returns the actions that bring the cluster to the spec; raises UserError when refused.

    Absent: create. Ours and half-made: delete and create. Ours with only stopped nodes: start
    them. Healthy and as specified: nothing. Differs: rebuild only when ours and `recreate`.
    Not ours: used as it is when healthy and as specified, else refused, unless `adopt` makes it
    ours (adopting a healthy, fitting cluster just records it).
    """
    if cluster.provider == "existing":
        return []
    name = cluster.name
    if not state.exists:
        return [_create(cluster)]
    ours = state.owned or adopt
    adopt_action = (
        [Action(STEP, "adopt-cluster", name, "record it as managed by laconic-helm")]
        if adopt and not state.owned
        else []
    )
    if state.problems:
        only_stopped = not state.unfinished and set(state.problems) == {
            stopped_problem(n) for n in state.stopped_nodes
        }
        if ours and only_stopped:
            return adopt_action + [
                Action(STEP, "start-node", n.name, f"it is {n.status}") for n in state.stopped_nodes
            ]
        if ours:
            why = "; ".join(state.problems)
            return [Action(STEP, "delete-cluster", name, f"rebuild: {why}"), _create(cluster)]
        raise UserError(
            f"cluster {name}: exists but is not healthy ({'; '.join(state.problems)}) and "
            f"{state.ownership}, so laconic-helm leaves it alone",
            hint=f"delete it (kind delete cluster --name {name}), or pass --adopt-cluster to let "
            "laconic-helm rebuild it",
        )
    diffs = differences(cluster, state)
    if not diffs:
        return adopt_action
    listed = "; ".join(diffs)
    if not ours:
        raise UserError(
            f"cluster {name}: differs from the spec ({listed}) and {state.ownership}, "
            "so laconic-helm will not change it",
            hint="use another cluster name, make the spec match it, or pass --adopt-cluster "
            "--recreate-cluster to rebuild it",
        )
    if not recreate:
        raise UserError(
            f"cluster {name}: differs from the spec ({listed}); these are fixed when a kind "
            "cluster is created",
            hint="pass --recreate-cluster to rebuild it (loaded images and node data are lost), "
            "or make the spec match it",
        )
    return [Action(STEP, "delete-cluster", name, f"rebuild: {listed}"), _create(cluster)]


def plan_delete_cluster(cluster: Cluster, state: ClusterState) -> list[Action]:
    """Returns the action deleting the cluster (for `down --delete-cluster`); only if ours.

    A cluster someone else made becomes ours only through `deploy --adopt-cluster`.
    """
    if cluster.provider == "existing":
        raise UserError(
            f"cluster {cluster.name}: provider 'existing': laconic-helm never deletes it"
        )
    if not state.exists:
        return []
    if not state.owned:
        raise UserError(
            f"cluster {cluster.name}: {state.ownership}, so laconic-helm will not delete it",
            hint=f"delete it yourself (kind delete cluster --name {cluster.name}), or adopt it "
            "first with deploy --adopt-cluster",
        )
    return [Action(STEP, "delete-cluster", cluster.name, state.ownership)]


def check_converged(cluster: Cluster, state: ClusterState) -> None:
    """Raises ClusterError unless the cluster is there, healthy and as specified."""
    if cluster.provider == "existing":
        if state.problems:
            raise ClusterError(f"cluster context {cluster.kube_context}: {state.problems[0]}")
        return
    if not state.exists:
        raise ClusterError(f"cluster {cluster.name}: absent after creating it")
    if state.problems:
        raise ClusterError(f"cluster {cluster.name}: {'; '.join(state.problems)}")
    diffs = differences(cluster, state)
    if diffs:
        raise ClusterError(f"cluster {cluster.name}: differs from the spec: {'; '.join(diffs)}")
