"""Helm releases that converge from any state: observe what is stored, plan, act with re-checks.

`observe_release` only reads (the release's stored revisions, the namespace, the Secrets it
needs and, when an upgrade is due, every object the chart renders). `plan_release` is pure: it
decides every repair, adoption and skip from that state. `apply_release` acts, re-checking
before each write. `ensure_release` is the three in a row.

Repairs (no revision is ever deleted by hand, and no rollback is needed):
- a stale `pending-*` revision (a helm that was killed) is unlocked: its stored status becomes
  `failed`, keeping history, and the upgrade that follows proceeds from it;
- `uninstalling` (an interrupted uninstall) is finished with `helm uninstall`, then installed;
  objects marked `helm.sh/resource-policy: keep` (the data) survive it.
A pending revision that a live helm process on this host is still working on is never touched.

Adoption: a rendered object that exists without an owner (e.g. left by laconic-so's create-only
install) is stamped with Helm's ownership metadata, so the upgrade takes it over; one owned by
another release stops the run before any write. Helm 4 takes objects over with client-side
apply (see `_upgrade`) and applies server-side otherwise.

Restarts: an upgrade that changes the pod template of a serving rpc or validator node waits
for the node's restart window first (restarts.py), unless turned off.

Skipping: the digest of the chart's files, the effective values and the caller's extras (image
IDs, Secret content hashes) is stored in the revision's description and as a pod annotation.
When the newest revision is `deployed` with the desired digest, nothing is written at all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyhelm3 import errors as helm_errors

from laconic_helm import restarts
from laconic_helm.actions import Action
from laconic_helm.desired import (
    DIGEST_ANNOTATION,
    POD_ANNOTATIONS,
    DesiredRelease,
    load_chart,
    manifest_refs,
    refs,
    render,
    short_digest,
)
from laconic_helm.errors import ClusterError, DeadlineExceeded, ReleaseError
from laconic_helm.helm import STOP_GRACE, live_helm_pids, release_error
from laconic_helm.kube import (
    DRIVER,
    MANAGED_BY,
    RELEASE_NAME,
    RELEASE_NAMESPACE,
    Kube,
    ObjectRef,
    Owner,
    decode_release,
    owner_of,
)
from laconic_helm.kube import HELM as HELM_MANAGER

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from laconic_helm.helm import Helm

DESCRIPTION_PREFIX = "laconic-helm digest="

PENDING = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
GOOD = frozenset({"deployed", "superseded"})
BUSY_WAIT = 15.0  # seconds to let a live helm on this host finish before giving up
MIN_HELM_SECONDS = 5.0  # do not start a helm operation with less budget than this


# -- observed state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """One stored revision of a release, as Helm recorded it."""

    number: int
    status: str
    description: str = ""
    digest: str | None = None
    secret: str = ""  # the Secret that stores it
    manifest: str = field(default="", repr=False, compare=False)  # what helm applied


def _revision_digest(record: Mapping[str, Any]) -> str | None:
    description = (record.get("info") or {}).get("description") or ""
    if description.startswith(DESCRIPTION_PREFIX):
        return description.removeprefix(DESCRIPTION_PREFIX).split()[0]
    # A rollback rewrites the description but restores the values, annotation included.
    annotations = ((record.get("config") or {}).get(POD_ANNOTATIONS)) or {}
    found = annotations.get(DIGEST_ANNOTATION) if isinstance(annotations, dict) else None
    return found if isinstance(found, str) else None


def revision_from_secret(secret: Mapping[str, Any]) -> Revision:
    name = (secret.get("metadata") or {}).get("name", "?")
    try:
        record = decode_release(secret)
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise ClusterError(f"helm release record {name} is unreadable: {exc}") from None
    info = record.get("info") or {}
    return Revision(
        number=int(record.get("version", 0)),
        status=str(info.get("status", "unknown")),
        description=str(info.get("description") or ""),
        digest=_revision_digest(record),
        secret=name,
        manifest=str(record.get("manifest") or ""),
    )


@dataclass(frozen=True)
class ObservedObject:
    """A rendered object that already exists in the cluster, with its Helm ownership."""

    ref: ObjectRef
    owner: Owner


@dataclass(frozen=True)
class ReleaseState:
    """What is there for one release; read-only, cheap, the single input of planning."""

    name: str
    namespace: str
    namespace_exists: bool
    revisions: tuple[Revision, ...] = ()  # oldest first
    secrets: Mapping[str, str] = field(default_factory=dict)  # absent | current | outdated
    rendered: tuple[ObjectRef, ...] = ()  # observed only when an upgrade is due
    existing: tuple[ObservedObject, ...] = ()  # the rendered objects already present
    busy: tuple[int, ...] = ()  # pids of helm processes on this host working on the release
    # ObjectRef.key of every object the newest deployed (or superseded) revision applied
    applied: frozenset[tuple[str, str, str | None, str]] = frozenset()
    # serving node pods the due upgrade restarts (looked for only under a restart window)
    restarting: tuple[restarts.RunningNode, ...] = ()

    @property
    def adopting(self) -> tuple[ObjectRef, ...]:
        """Existing rendered objects that no deployed revision of this release has applied
        yet: the upgrade takes them over (whether stamped in this run or an earlier one)."""
        return tuple(o.ref for o in self.existing if o.ref.key not in self.applied)

    @property
    def latest(self) -> Revision | None:
        return self.revisions[-1] if self.revisions else None

    @property
    def status(self) -> str:
        return self.latest.status if self.latest else "absent"

    def up_to_date(self, digest: str) -> bool:
        return self.latest is not None and (
            self.latest.status == "deployed" and self.latest.digest == digest
        )

    def summary(self) -> dict[str, Any]:
        """The state as plain data for `status` and the JSON report (no Secret content)."""
        latest = self.latest
        return {
            "release": self.name,
            "namespace": self.namespace,
            "status": self.status,
            "revision": latest.number if latest else None,
            "digest": latest.digest if latest else None,
            "secrets": dict(self.secrets),
        }


async def _read_revisions(kube: Kube, name: str, namespace: str) -> tuple[Revision, ...]:
    secrets = await kube.list_release_secrets(namespace, name)
    return tuple(sorted((revision_from_secret(s) for s in secrets), key=lambda r: r.number))


async def observe_release(
    kube: Kube, helm: Helm, desired: DesiredRelease, *, busy_wait: float = BUSY_WAIT
) -> ReleaseState:
    """Reads everything planning needs for `desired`; writes nothing.

    When a pending or uninstalling revision is being worked on by a live helm on this host,
    it waits up to `busy_wait` seconds for that helm to finish before reporting it busy.
    """
    name, ns = desired.name, desired.namespace
    revisions = await _read_revisions(kube, name, ns)
    busy: tuple[int, ...] = ()
    latest = revisions[-1] if revisions else None
    if latest and (latest.status in PENDING or latest.status == "uninstalling"):
        stop_at = time.monotonic() + busy_wait
        busy = live_helm_pids(name, ns, server=kube.server)
        while busy and time.monotonic() < stop_at:
            await asyncio.sleep(0.5)
            busy = live_helm_pids(name, ns, server=kube.server)
        revisions = await _read_revisions(kube, name, ns)
    namespace_exists = await kube.get_namespace(ns) is not None
    secrets: dict[str, str] = {}
    for s in desired.secrets:
        live = await kube.get_secret(ns, s.name) if namespace_exists else None
        secrets[s.name] = (
            "absent" if live is None else ("current" if s.matches(live) else "outdated")
        )
    state = ReleaseState(name, ns, namespace_exists, revisions, secrets, busy=busy)
    if state.up_to_date(desired.digest):
        return state
    rendered = []
    existing = []
    objects = await render(helm, desired, upgrade=bool(revisions))
    for ref in refs(objects):
        ref = await kube.scoped(ref, ns)
        rendered.append(ref)
        live = await kube.get_object(ref)
        if live is not None:
            existing.append(ObservedObject(ref, owner_of(live)))
    good = next((r for r in reversed(revisions) if r.status in GOOD), None)
    applied = frozenset(
        [(await kube.scoped(ref, ns)).key for ref in manifest_refs(good.manifest)] if good else []
    )
    restarting = (
        await restarts.observe_running(kube, ns, good.manifest, objects)
        if good and desired.restart_window
        else ()
    )
    return ReleaseState(
        name,
        ns,
        namespace_exists,
        revisions,
        secrets,
        tuple(rendered),
        tuple(existing),
        busy,
        applied,
        restarting,
    )


async def observe_absent(helm: Helm, desired: DesiredRelease) -> ReleaseState:
    """The state of `desired` in a cluster that is still to be made (for `plan`): nothing
    stored, nothing live; the render says whether the chart brings its own namespace."""
    objects = await render(helm, desired, upgrade=False)
    return ReleaseState(
        desired.name,
        desired.namespace,
        namespace_exists=False,
        secrets={s.name: "absent" for s in desired.secrets},
        rendered=tuple(refs(objects)),
    )


# -- planning (pure) --------------------------------------------------------------------------


def _renders_namespace(state: ReleaseState) -> bool:
    return any(r.kind == "Namespace" and r.name == state.namespace for r in state.rendered)


def _check_claims(desired: DesiredRelease, state: ReleaseState) -> None:
    for obj in state.existing:
        owner = obj.owner
        if not owner.belongs_elsewhere(desired.name, desired.namespace):
            continue
        other = f"{owner.namespace or '?'}/{owner.release or '?'}"
        raise ReleaseError(
            desired.name,
            f"{obj.ref} belongs to release {other}; refusing to take it",
            hint="remove it from that release or rename it in this chart",
        )


def plan_release(
    desired: DesiredRelease, state: ReleaseState, *, restart_window: bool = True
) -> list[Action]:
    """Decides, without I/O, what brings the release from `state` to `desired`.

    An upgrade that restarts a serving node waits for its restart window first, unless the
    release has none or `restart_window` is off. Raises ReleaseError, before anything is
    written, when a live helm holds the release or when the chart renders an object that
    another release owns.
    """
    step, target = desired.step, desired.target
    latest = state.latest
    stuck = latest is not None and (latest.status in PENDING or latest.status == "uninstalling")
    if stuck and state.busy:
        pids = ", ".join(str(p) for p in state.busy)
        raise ReleaseError(
            desired.name,
            f"revision {latest.number} is {latest.status} and helm (pid {pids}) is still "
            "working on it; wait for it to finish or stop it, then re-run",
        )
    _check_claims(desired, state)
    recovery: list[Action] = []
    if latest is not None and latest.status in PENDING:
        detail = f"revision {latest.number} {latest.status} -> failed (no helm is working on it)"
        recovery.append(Action(step, "unlock-release", target, detail))
    elif latest is not None and latest.status == "uninstalling":
        detail = f"finish the interrupted uninstall of revision {latest.number}"
        recovery.append(Action(step, "uninstall-release", target, detail))
    prepare: list[Action] = []
    if not state.namespace_exists:
        owned = "owned by the release: the chart renders it" if _renders_namespace(state) else ""
        prepare.append(Action(step, "create-namespace", desired.namespace, owned))
    for s in desired.secrets:
        have = state.secrets.get(s.name, "absent")
        if have != "current":
            how = "create" if have == "absent" else "update: content differs"
            prepare.append(Action(step, "apply-secret", f"{s.namespace}/{s.name}", how))
    if not recovery and state.up_to_date(desired.digest):
        assert latest is not None
        detail = f"revision {latest.number}, digest {short_digest(desired.digest)}"
        return [*prepare, Action(step, "up-to-date", target, detail)]
    for obj in state.existing:
        if not obj.owner.is_release(desired.name, desired.namespace):
            prepare.append(Action(step, "adopt-object", str(obj.ref), "exists without an owner"))
    if latest is None or latest.status in ("uninstalling", "uninstalled"):
        how = "install"
    else:
        was = "failed" if latest.status in PENDING else latest.status
        how = f"upgrade from revision {latest.number} ({was})"
    digest = short_digest(desired.digest)
    upgrade = Action(step, "upgrade-release", target, f"{how}, digest {digest}")
    waits = [
        Action(step, "wait-restart-window", node.target, desired.restart_window.describe())
        for node in state.restarting
        if restart_window and desired.restart_window
    ]
    return [*recovery, *prepare, *waits, upgrade]


def plan_objects(desired: DesiredRelease, state: ReleaseState) -> list[str]:
    """What the due upgrade does to each rendered object, as lines for `plan` to show under
    it: `create-object` for the absent ones, `update-object` for those the release owns
    already (taking over the others is `adopt-object`, an action of `plan_release`). These are
    helm's doing within `upgrade-release`, not actions of their own. Pure; empty when no
    upgrade is due."""
    existing = {o.ref.key: o for o in state.existing}
    lines = []
    for ref in state.rendered:
        found = existing.get(ref.key)
        if found is None:
            lines.append(f"{desired.step}: create-object {ref} (absent)")
        elif found.owner.is_release(desired.name, desired.namespace):
            lines.append(f"{desired.step}: update-object {ref} (the release's own)")
    return lines


# -- acting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseOutcome:
    """What `apply_release` did: the actions carried out and the revision now newest."""

    actions: tuple[Action, ...]
    revision: int | None
    digest: str
    restart_wait: float | None = None  # seconds spent waiting for a restart window

    @property
    def changed(self) -> bool:
        return any(a.changes for a in self.actions)


async def _within(
    deadline: float | None, release: str, what: str, work: Callable[[], Awaitable[Any]]
) -> Any:
    """Runs a helm operation so that it is stopped (SIGINT, helm records `failed`) in time to
    return by `deadline` (a time.monotonic() value); raises DeadlineExceeded then."""
    if deadline is None:
        return await work()
    left = deadline - time.monotonic() - STOP_GRACE
    if left < MIN_HELM_SECONDS:
        raise DeadlineExceeded(f"release {release}: no time left to {what}; re-run to continue")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + left):
            return await work()
    except TimeoutError:
        raise DeadlineExceeded(
            f"release {release}: deadline reached during {what}; helm was stopped and the "
            "revision recorded failed; re-run to continue"
        ) from None


async def _unlock(kube: Kube, desired: DesiredRelease, state: ReleaseState) -> None:
    latest = state.latest
    assert latest is not None
    # Re-check right before the write: a live helm may have appeared since observing.
    if live_helm_pids(desired.name, desired.namespace, server=kube.server):
        raise ReleaseError(desired.name, "a helm process started working on it; re-run later")
    done = await kube.set_release_status(
        desired.namespace,
        latest.secret,
        expect=latest.status,
        status="failed",
        description=f"Unlocked by laconic-helm from stale '{latest.status}' state",
    )
    if not done:
        raise ReleaseError(
            desired.name, f"revision {latest.number} changed while being unlocked; re-run"
        )


async def _adopt(kube: Kube, desired: DesiredRelease, ref: ObjectRef) -> bool:
    live = await kube.get_object(ref)
    if live is None:
        return False  # gone since observing: helm will create it
    owner = owner_of(live)
    if owner.is_release(desired.name, desired.namespace):
        return False
    if owner.belongs_elsewhere(desired.name, desired.namespace):
        other = f"{owner.namespace or '?'}/{owner.release or '?'}"
        raise ReleaseError(desired.name, f"{ref} belongs to release {other}; refusing to take it")
    version = str(live["metadata"]["resourceVersion"])
    await kube.stamp_owner(ref, desired.name, desired.namespace, version)
    return True


async def _upgrade(
    helm: Helm, desired: DesiredRelease, state: ReleaseState, deadline: float | None
) -> int:
    chart = await load_chart(helm, desired)
    # Helm 4 applies server-side, where a field another manager set stays unless the chart
    # sets it too: an adopted Deployment whose installer left `rollingUpdate` keeps it next to
    # the chart's `type: Recreate`, and the API rejects the pair. Taking objects over therefore
    # goes client-side, as Helm 3 does: the strategic merge patch drops such fields (retainKeys).
    # Otherwise Helm 4 applies server-side, forcing conflicts so the chart wins on its fields.
    ssa = helm.major >= 4 and not state.adopting
    try:
        revision = await _within(
            deadline,
            desired.name,
            "helm upgrade",
            lambda: helm.client.install_or_upgrade_release(
                desired.name,
                chart,
                desired.values,
                namespace=desired.namespace,
                create_namespace=False,
                description=desired.description,
                wait=desired.wait,
                timeout=f"{desired.timeout}s",
                server_side=None if helm.major < 4 else ("true" if ssa else "false"),
                force_conflicts=ssa,
            ),
        )
    except helm_errors.Error as exc:
        raise release_error(desired.name, "upgrade", exc) from None
    return int(revision.revision)


async def _uninstall(
    helm: Helm, name: str, namespace: str, timeout: int, deadline: float | None
) -> None:
    try:
        await _within(
            deadline,
            name,
            "helm uninstall",
            lambda: helm.client.uninstall_release(
                name, namespace=namespace, wait=True, timeout=f"{timeout}s"
            ),
        )
    except helm_errors.Error as exc:
        raise release_error(name, "uninstall", exc) from None


async def apply_release(
    kube: Kube,
    helm: Helm,
    desired: DesiredRelease,
    state: ReleaseState,
    actions: Iterable[Action],
    *,
    deadline: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ReleaseOutcome:
    """Carries out planned actions in order; each re-reads what it is about to change.

    Helm runs are stopped (SIGINT) in time for `deadline`, or when the task is cancelled; the
    revision is then recorded `failed` and the next run carries on from it. A restart-window
    wait shows what it waits for through `progress`.
    """
    done: list[Action] = []
    revision = state.latest.number if state.latest else None
    waited: float | None = None
    for action in actions:
        verb = action.verb
        if verb == "unlock-release":
            await _unlock(kube, desired, state)
        elif verb == "uninstall-release":
            await _uninstall(helm, desired.name, desired.namespace, desired.timeout, deadline)
            revision = None
        elif verb == "create-namespace":
            owned = _renders_namespace(state)
            await kube.ensure_namespace(
                desired.namespace,
                labels={MANAGED_BY: HELM_MANAGER if owned else DRIVER},
                annotations={
                    RELEASE_NAME: desired.name,
                    RELEASE_NAMESPACE: desired.namespace,
                }
                if owned
                else {},
            )
        elif verb == "apply-secret":
            secret = next(s for s in desired.secrets if action.target == f"{s.namespace}/{s.name}")
            await kube.ensure_secret(secret)
        elif verb == "adopt-object":
            ref = next(o.ref for o in state.existing if str(o.ref) == action.target)
            if not await _adopt(kube, desired, ref):
                continue
        elif verb == "wait-restart-window":
            node = next(n for n in state.restarting if n.target == action.target)
            assert desired.restart_window is not None  # planned only under one
            waited = (waited or 0.0) + await restarts.wait_for_window(
                kube,
                desired.name,
                node,
                desired.restart_window,
                deadline=deadline,
                progress=progress,
            )
        elif verb == "upgrade-release":
            revision = await _upgrade(helm, desired, state, deadline)
        elif verb != "up-to-date":
            raise ValueError(f"unknown release action {verb!r}")
        done.append(action)
    return ReleaseOutcome(tuple(done), revision, desired.digest, waited)


async def ensure_release(
    kube: Kube,
    helm: Helm,
    desired: DesiredRelease,
    *,
    deadline: float | None = None,
    busy_wait: float = BUSY_WAIT,
    restart_window: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> ReleaseOutcome:
    """Brings one release to `desired` from whatever state it is in; idempotent."""
    state = await observe_release(kube, helm, desired, busy_wait=busy_wait)
    actions = plan_release(desired, state, restart_window=restart_window)
    return await apply_release(
        kube, helm, desired, state, actions, deadline=deadline, progress=progress
    )


async def ensure_release_absent(
    kube: Kube,
    helm: Helm,
    name: str,
    namespace: str,
    *,
    timeout: int = 300,
    deadline: float | None = None,
) -> bool:
    """Uninstalls the release if any revision of it is stored; returns whether it did.

    Objects marked `helm.sh/resource-policy: keep` (the data) stay behind. Any stored state
    (pending or uninstalling included) is uninstalled, unless a live helm is working on it.
    """
    if not await _read_revisions(kube, name, namespace):
        return False
    busy = live_helm_pids(name, namespace, server=kube.server)
    if busy:
        pids = ", ".join(str(p) for p in busy)
        raise ReleaseError(name, f"helm (pid {pids}) is working on it; wait for it, then re-run")
    await _uninstall(helm, name, namespace, timeout, deadline)
    return True
