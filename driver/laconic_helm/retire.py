"""Retiring a previous installer's objects once the release that replaces them is deployed.

A takeover (from laconic-so) leaves objects the new release does not render: the node's old
Deployment, its Services, its Ingress. A release's `retire` section names them. Once the release
is deployed and its workload exists they are removed, each only while it still carries the
section's selector labels and no Helm release owns it, so an object that merely shares a name
stays. Data never goes: the spec refuses PersistentVolumes, claims, Namespaces, Secrets and
ConfigMaps, and removing a Deployment leaves its pods' volumes alone.

A Deployment goes so that its pods get the grace period the node needs to stop cleanly (a hard
stop costs a snapshot reload): the Deployment, then each of its ReplicaSets, is deleted with
propagation Orphan (once marked for deletion neither controller creates or deletes a pod), then
the pods are deleted with `gracePeriodSeconds`, which takes precedence over the pods' own period
(laconic-so left Kubernetes' 30 s). Patching a longer period into the pod template instead would
roll the Deployment: its Recreate strategy would stop the old pod with the old 30 s and start a
fresh copy of it.

Every step is safe to repeat. An absent object counts as removed, and a run interrupted between
the steps finds the orphaned ReplicaSets and pods by name and labels and carries on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from laconic_helm.actions import Action
from laconic_helm.errors import ReleaseError
from laconic_helm.kube import HELM as HELM_MANAGER
from laconic_helm.kube import Kube, ObjectRef, owner_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from laconic_helm.spec import Release, Retire

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
POLL = 2.0  # seconds between readiness checks

_Part = tuple[str, str]  # (name, uid) of a ReplicaSet or pod still to delete


@dataclass(frozen=True)
class Leftover:
    """One object of a `retire` section as found: what of it is still to remove, or why it
    stays."""

    ref: ObjectRef
    uid: str | None = None  # None: the object itself is gone or already being deleted
    replica_sets: tuple[_Part, ...] = ()  # a Deployment's, left by an interrupted run too
    pods: tuple[_Part, ...] = ()  # a Deployment's pods not yet told to stop
    kept: str = ""  # not the previous installer's object: why it stays

    @property
    def present(self) -> bool:
        return not self.kept and bool(self.uid or self.replica_sets or self.pods)

    @property
    def is_workload(self) -> bool:
        return self.ref.kind in WORKLOAD_KINDS


def _step(release: Release) -> str:
    return f"release/{release.name}"


def _refs(release: Release) -> list[ObjectRef]:
    assert release.retire is not None
    return [
        ObjectRef(o.version, o.kind, o.name, o.namespace or release.namespace)
        for o in release.retire.objects
    ]


def _why_kept(live: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """Why a live object is not the previous installer's to remove ("" when it is)."""
    meta = live.get("metadata") or {}
    owner = owner_of(live)
    if owner.release or owner.managed_by == HELM_MANAGER:
        where = f"{owner.namespace or '?'}/{owner.release or '?'}"
        return f"kept: Helm release {where} owns it"
    have = meta.get("labels") or {}
    missing = [f"{key}={value}" for key, value in labels.items() if have.get(key) != value]
    if missing:
        return f"kept: it lacks the label {', '.join(missing)}, so it is not the one to retire"
    return ""


def _controlled_by(meta: Mapping[str, Any], kind: str, name: str) -> bool:
    """True when the object has no controller, or `kind` `name` is its controller."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return bool(ref.get("kind") == kind and ref.get("name") == name)
    return True


async def _deployment_parts(
    kube: Kube, ref: ObjectRef, selector: str
) -> tuple[tuple[_Part, ...], tuple[_Part, ...]]:
    """The ReplicaSets and pods of Deployment `ref` still to delete, found by the names the
    Deployment controller gives them (`<deployment>-<pod-template-hash>[-<suffix>]`), so they
    are found after the Deployment is gone too."""
    assert ref.namespace is not None
    sets: list[_Part] = []
    for rs in await kube.list_objects("apps/v1", "ReplicaSet", ref.namespace, selector=selector):
        meta = rs["metadata"]
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if (
            template_hash
            and meta["name"] == f"{ref.name}-{template_hash}"
            and _controlled_by(meta, "Deployment", ref.name)
            and not meta.get("deletionTimestamp")
        ):
            sets.append((meta["name"], meta["uid"]))
    pods: list[_Part] = []
    for pod in await kube.list_objects("v1", "Pod", ref.namespace, selector=selector):
        meta = pod["metadata"]
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        owner = f"{ref.name}-{template_hash}"
        if (
            template_hash
            and meta["name"].startswith(f"{owner}-")
            and _controlled_by(meta, "ReplicaSet", owner)
            and not meta.get("deletionTimestamp")
        ):
            pods.append((meta["name"], meta["uid"]))
    return tuple(sets), tuple(pods)


async def observe_retire(kube: Kube, release: Release) -> list[Leftover]:
    """Looks up every object of the release's `retire` section; writes nothing."""
    retire = release.retire
    if retire is None:
        return []
    labels = retire.labels
    found = []
    for ref in _refs(release):
        live = await kube.get_object(ref)
        kept = _why_kept(live, labels) if live is not None else ""
        if kept:
            found.append(Leftover(ref, kept=kept))
            continue
        meta = (live or {}).get("metadata") or {}
        uid = None if live is None or meta.get("deletionTimestamp") else str(meta["uid"])
        sets: tuple[_Part, ...] = ()
        pods: tuple[_Part, ...] = ()
        if ref.kind == "Deployment":
            sets, pods = await _deployment_parts(kube, ref, retire.selector)
        found.append(Leftover(ref, uid, sets, pods))
    return found


def _stop_detail(leftover: Leftover, retire: Retire) -> str:
    grace = retire.grace_period_seconds
    how = f"a {grace} s grace period" if grace is not None else "their own grace period"
    parts = []
    if leftover.uid is None:
        parts.append("the Deployment is already gone")
    if leftover.pods:
        parts.append(f"{len(leftover.pods)} pod(s) stop with {how}")
    return "; ".join(parts) or "no pod running"


def _action(release: Release, leftover: Leftover) -> Action | None:
    assert release.retire is not None
    target = str(leftover.ref)
    if leftover.kept:
        return Action(_step(release), "keep-object", target, leftover.kept)
    if not leftover.present:
        return None
    detail = (
        _stop_detail(leftover, release.retire)
        if leftover.ref.kind == "Deployment"
        else "left by the previous installer"
    )
    return Action(_step(release), "retire-object", target, detail)


def plan_retire(release: Release, leftovers: Sequence[Leftover]) -> list[Action]:
    """The removals (`retire-object`) and the objects left alone (`keep-object`); pure."""
    if release.retire is None:
        return []
    return [a for a in (_action(release, lo) for lo in leftovers) if a is not None]


def _owned_by(obj: Mapping[str, Any], release: str, namespace: str) -> bool:
    return owner_of(obj).is_release(release, namespace)


async def release_workloads(kube: Kube, release: str, namespace: str) -> list[dict[str, Any]]:
    """The Deployments, StatefulSets and DaemonSets of Helm release `release`."""
    found = []
    for kind in WORKLOAD_KINDS:
        items = await kube.list_objects("apps/v1", kind, namespace)
        found += [{**o, "kind": kind} for o in items if _owned_by(o, release, namespace)]
    return found


async def _check_replacement(kube: Kube, release: Release, leftover: Leftover) -> None:
    if not await release_workloads(kube, release.name, release.namespace):
        raise ReleaseError(
            release.name,
            f"has no workload in namespace {release.namespace}, so {leftover.ref} stays "
            "(the old workload goes only once its replacement exists)",
            hint="check that the chart's values enable the workload",
        )


async def _retire_deployment(kube: Kube, leftover: Leftover, retire: Retire) -> None:
    ref = leftover.ref
    assert ref.namespace is not None
    if leftover.uid is not None:
        await kube.delete_object(ref, uid=leftover.uid, propagation="Orphan")
    # Listed again now that no Deployment controller makes new ones.
    sets, _ = await _deployment_parts(kube, ref, retire.selector)
    for name, uid in sets:
        rs = ObjectRef("apps/v1", "ReplicaSet", name, ref.namespace)
        await kube.delete_object(rs, uid=uid, propagation="Orphan")
    # And again now that no ReplicaSet controller replaces a pod.
    _, pods = await _deployment_parts(kube, ref, retire.selector)
    for name, uid in pods:
        pod = ObjectRef("v1", "Pod", name, ref.namespace)
        await kube.delete_object(pod, uid=uid, grace_seconds=retire.grace_period_seconds)


async def ensure_retired(kube: Kube, release: Release) -> list[Action]:
    """Removes what is left of the release's `retire` section; returns what it removed
    (`retire-object`) and what it left alone as not the installer's (`keep-object`)."""
    return await apply_retired(
        kube, release, plan_retire(release, await observe_retire(kube, release))
    )


async def apply_retired(kube: Kube, release: Release, planned: Sequence[Action]) -> list[Action]:
    """Carries out planned removals; returns the planned actions that were carried out.

    Call it once the release is deployed: it looks every planned object up again (the upgrade
    may have taken minutes) and removes a workload only when the release has one of its own.
    """
    retire = release.retire
    if retire is None or not planned:
        return []
    removals = {a.target for a in planned if a.verb == "retire-object"}
    done = [a for a in planned if a.verb == "keep-object"]
    for leftover in await observe_retire(kube, release):
        action = _action(release, leftover)
        if action is None or action.verb != "retire-object" or action.target not in removals:
            continue  # gone since planning, or not planned: the next run plans it
        if leftover.ref.kind == "Deployment":
            await _check_replacement(kube, release, leftover)
            await _retire_deployment(kube, leftover, retire)
        else:
            assert leftover.uid is not None
            if not await kube.delete_object(leftover.ref, uid=leftover.uid):
                continue  # gone since it was looked up
        done.append(next(a for a in planned if a.target == action.target))
    return done


def removed(actions: Sequence[Action]) -> bool:
    """True when `ensure_retired` removed anything (keeping an object changes nothing)."""
    return any(a.verb == "retire-object" for a in actions)


def replaces_workload(leftovers: Sequence[Leftover]) -> bool:
    """True while an old workload is still there: the new pods may need what it holds (host
    ports, the ledger, the identity), so the release cannot become ready before it goes."""
    return any(lo.present and lo.is_workload for lo in leftovers)


def _ready(obj: Mapping[str, Any]) -> bool:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if int(st.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False
    if obj.get("kind") == "DaemonSet":
        want = int(st.get("desiredNumberScheduled", 0))
        updated, ready = st.get("updatedNumberScheduled", 0), st.get("numberReady", 0)
    else:
        want = int(spec.get("replicas", 1))
        updated, ready = st.get("updatedReplicas", 0), st.get("readyReplicas", 0)
    return int(updated) >= want and int(ready) >= want


async def wait_ready(kube: Kube, release: str, namespace: str, *, timeout: float) -> None:
    """Waits until every workload of the release runs its current revision and is ready."""
    stop_at = time.monotonic() + timeout
    while True:
        workloads = await release_workloads(kube, release, namespace)
        waiting = [f"{w['kind']} {w['metadata']['name']}" for w in workloads if not _ready(w)]
        if workloads and not waiting:
            return
        if time.monotonic() >= stop_at:
            raise ReleaseError(
                release,
                f"deployed, but {', '.join(waiting) or 'no workload'} not ready within "
                f"{timeout:g} s of the old workload's removal",
                hint="`laconic-helm status` shows it; pods of a real node may need longer",
            )
        await asyncio.sleep(POLL)
