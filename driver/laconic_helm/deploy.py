"""The deploy sequence, its read-only siblings `plan` and `status`, and `down`.

deploy: preflight (everything checked, nothing touched) -> cluster -> images -> each release in
order. Every step observes the live state first and acts only on the difference, so a run
interrupted anywhere is finished by the next, and a run with nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from laconic_helm import cluster, images, lock, preflight, releases, takeover, verify
from laconic_helm.errors import DeadlineExceeded, UserError
from laconic_helm.helm import STOP_GRACE
from laconic_helm.helm import connect as connect_helm
from laconic_helm.kube import Kube

if TYPE_CHECKING:
    from laconic_helm.cluster import ClusterAccess, ClusterState
    from laconic_helm.helm import Helm
    from laconic_helm.output import Reporter
    from laconic_helm.plan import Action
    from laconic_helm.spec import Release, Spec

MIN_DEADLINE = 2 * STOP_GRACE  # below this no helm step could be stopped cleanly in time


@dataclass(frozen=True)
class Options:
    """How a deploy may act, beyond what the spec says."""

    deadline: float | None = None  # seconds the whole run may take
    lock_wait: float = 60.0  # seconds to wait for another run of the same deployment
    recreate_cluster: bool = False  # rebuild a cluster whose ports/mounts differ (ours only)
    adopt_cluster: bool = False  # treat a same-named cluster this tool did not create as ours


@dataclass(frozen=True)
class Prepared:
    """Everything preflight learned; deploy acts on it without asking again."""

    desired: tuple[releases.DesiredRelease, ...]
    cluster_state: ClusterState
    helm: Helm  # bound to the cluster's access already: one `helm version` per run


def _uses_kind(spec: Spec) -> bool:
    return spec.cluster.provider == "kind"


async def _desired_releases(spec: Spec) -> tuple[releases.DesiredRelease, ...]:
    """Reads every release's inputs; the IDs of the images it runs are part of its digest."""
    image_ids: dict[str, str] = {}
    if spec.images and _uses_kind(spec):
        image_ids = {i.ref: i.id for i in await images.check_images(spec.images)}
    return tuple(
        releases.desired_release(
            r, extras={f"image/{ref}": image_ids[ref] for ref in r.images if ref in image_ids}
        )
        for r in spec.releases
    )


async def _together(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs reads at once; the first error stops the others before it is raised (gather would
    leave them to asyncio.run's shutdown, where a cancelled read could wait for ever)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


async def _preflight(spec: Spec, opts: Options) -> Prepared:
    """Checks tools, files, images and the host; raises before any side effect."""
    # Independent reads, at once: a re-run spends most of its time waiting on these processes.
    access = cluster.access_of(spec.cluster)
    _, helm, desired, state = await _together(
        preflight.check_tools(spec.cluster),
        connect_helm(kubeconfig=access.kubeconfig, context=access.context),
        _desired_releases(spec),
        cluster.observe_cluster(spec.cluster),
    )
    # The charts' own checks refuse a values mistake now.
    await _together(*(releases.check_renders(helm, release) for release in desired))
    await preflight.check_host(spec.cluster, state)
    # Planning raises for a cluster we may not touch (not ours, or incompatible).
    cluster.plan_cluster(
        spec.cluster, state, recreate=opts.recreate_cluster, adopt=opts.adopt_cluster
    )
    return Prepared(desired, state, helm)


@contextlib.asynccontextmanager
async def _budget(deadline: float | None, current: list[str]) -> AsyncIterator[None]:
    """Stops the run STOP_GRACE seconds before `deadline`, leaving helm time to record `failed`."""
    if deadline is None:
        yield
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic()) - STOP_GRACE):
            yield
    except TimeoutError:
        where = current[-1] if current else "start"
        raise DeadlineExceeded(
            f"deadline reached during {where}; work done so far is kept; re-run to continue"
        ) from None


async def _connect(access: ClusterAccess, helm: Helm | None = None) -> tuple[Kube, Helm]:
    k = Kube.connect(access.kubeconfig, access.context)
    h = helm or await connect_helm(kubeconfig=access.kubeconfig, context=access.context)
    return k, h


async def _ensure_release(
    k: Kube,
    h: Helm,
    release: Release,
    desired: releases.DesiredRelease,
    deadline: float | None,
) -> tuple[releases.ReleaseOutcome, list[Action]]:
    """The release, then the removal of what it replaces (its `retire` section).

    While an old workload is still there the upgrade does not wait for readiness: the new pods
    may need what the old ones hold (host ports, the ledger), and those go only once the
    release is deployed. The wait the release asks for comes after the removal instead.
    """
    leftovers = await takeover.observe_retire(k, release)
    held = desired.wait and takeover.replaces_workload(leftovers)
    run = dataclasses.replace(desired, wait=False) if held else desired
    outcome = await releases.ensure_release(k, h, run, deadline=deadline)
    retired = await takeover.ensure_retired(k, release)
    if held:
        await takeover.wait_ready(k, desired.name, desired.namespace, timeout=desired.timeout)
    return outcome, retired


async def deploy(spec: Spec, reporter: Reporter, opts: Options) -> dict[str, Any]:
    """Brings cluster, images and releases to the spec; returns the report's extra fields."""
    if opts.deadline is not None and opts.deadline < MIN_DEADLINE:
        raise UserError(
            f"--deadline: {opts.deadline:g} s is too short; give at least {MIN_DEADLINE:g}"
        )
    deadline = time.monotonic() + opts.deadline if opts.deadline is not None else None
    current: list[str] = []
    async with (
        lock.deployment_lock(spec.cluster.name, wait=opts.lock_wait),
        _budget(deadline, current),
    ):
        current.append("preflight")
        with reporter.step("preflight") as rec:
            prepared = await _preflight(spec, opts)
            rec.done("ok", f"{len(prepared.desired)} releases, {len(spec.images)} images")

        current.append("cluster")
        with reporter.step(f"cluster {spec.cluster.name}") as rec:
            result = await cluster.ensure_cluster(
                spec.cluster,
                recreate=opts.recreate_cluster,
                adopt=opts.adopt_cluster,
                state=prepared.cluster_state,
            )
            k, h = await _connect(result.access, prepared.helm)
            made = [*result.actions, *await cluster.ensure_runtime_class(spec.cluster, k)]
            actions = [a.line() for a in made]
            rec.done("changed" if made else "ok", "; ".join(actions), actions=actions)

        if spec.images and _uses_kind(spec):
            current.append("images")
            await images.ensure_images(spec.cluster.name, spec.images, reporter)

        for release, desired in zip(spec.releases, prepared.desired, strict=True):
            current.append(f"release {desired.name}")
            with reporter.step(f"release {desired.name}") as rec:
                outcome, retired = await _ensure_release(k, h, release, desired, deadline)
                lines = [a.line() for a in (*outcome.actions, *retired)]
                rec.done(
                    "changed" if outcome.changed or takeover.removed(retired) else "ok",
                    "; ".join(lines),
                    actions=lines,
                    revision=outcome.revision,
                    digest=outcome.digest,
                )

        for r in spec.releases:
            if r.verify is not None:
                current.append(f"verify {r.name}")
                with reporter.step(f"verify {r.name}") as rec:
                    probe = await verify.probe_rpc(r.verify.url, r.verify.host)
                    rec.done("ok" if probe.ok else "warning", probe.detail, **probe.as_dict())
    return {}


async def plan(spec: Spec, reporter: Reporter, opts: Options) -> dict[str, Any]:
    """Lists what `deploy` would do against the live state; writes nothing."""
    with reporter.step("preflight"):
        prepared = await _preflight(spec, opts)
    state = prepared.cluster_state
    planned = cluster.plan_cluster(
        spec.cluster, state, recreate=opts.recreate_cluster, adopt=opts.adopt_cluster
    )
    lines = [a.line() for a in planned]
    # Adopting a cluster only records it as ours: what is in it can be planned as it is.
    unchanged = all(a.verb == "adopt-cluster" for a in planned)
    reachable = unchanged and (state.exists or not _uses_kind(spec))
    if spec.images and _uses_kind(spec):
        if reachable:
            wanted, nodes = await images.check_inputs(spec.cluster.name, spec.images)
            lines += [
                f"images: {a.action} {a.image.ref} on {a.node}"
                for a in images.plan_images(wanted, nodes)
                if a.action != "present"
            ]
        else:
            lines += [f"images: load {ref} into every node" for ref in spec.images]
    if reachable:
        access = await cluster.ensure_kubeconfig(spec.cluster, state)
        k, h = await _connect(access, prepared.helm)
        if spec.cluster.high_memlock:
            live = await cluster.observe_runtime_class(k)
            lines += [a.line() for a in cluster.plan_runtime_class(spec.cluster, live)]
        for release, desired in zip(spec.releases, prepared.desired, strict=True):
            observed = await releases.observe_release(k, h, desired)
            actions = [
                *releases.plan_release(desired, observed),
                *releases.plan_objects(desired, observed),
                *takeover.plan_retire(release, await takeover.observe_retire(k, release)),
            ]
            lines += [a.line() for a in actions if a.verb != "up-to-date"]
    else:
        lines += [a.line() for a in cluster.plan_runtime_class(spec.cluster, None)]
        lines += [f"release/{d.name}: install {d.target}" for d in prepared.desired]
    for line in lines or ["nothing to do: the deployment matches the spec"]:
        reporter.line(line)
    return {"actions": lines, "changed": False}


async def status(spec: Spec, reporter: Reporter) -> dict[str, Any]:
    """Reports cluster, nodes, images and releases as they are; writes nothing."""
    state = await cluster.observe_cluster(spec.cluster)
    doc: dict[str, Any] = {"cluster": state.summary(), "images": {}, "releases": []}
    healthy = (state.exists or not _uses_kind(spec)) and not state.problems
    problems = f"; {'; '.join(state.problems)}" if state.problems else ""
    reporter.line(
        f"{'✓' if healthy else '✗'} cluster {state.name}: {len(state.nodes)} nodes, "
        f"API {'ready' if state.api_ready else 'not answering'}{problems}"
    )
    if not healthy:
        return doc
    if spec.images and _uses_kind(spec):
        wanted, nodes = await images.check_inputs(spec.cluster.name, spec.images)
        for action in images.plan_images(wanted, nodes):
            doc["images"].setdefault(action.image.ref, {})[action.node] = action.action
            mark = "✓" if action.action == "present" else "✗"
            reporter.line(f"{mark} image {action.image.ref} on {action.node}: {action.action}")
    access = await cluster.ensure_kubeconfig(spec.cluster, state)
    k, h = await _connect(access)
    for r, desired in zip(spec.releases, await _desired_releases(spec), strict=True):
        observed = await releases.observe_release(k, h, desired)
        summary = observed.summary()
        workloads = await k.list_workloads(r.namespace)
        summary["workloads"] = {w.name: w.is_ready() for w in workloads}
        doc["releases"].append(summary)
        ready = sum(w.is_ready() for w in workloads)
        reporter.line(
            f"{'✓' if summary['status'] == 'deployed' else '✗'} release {r.name}: "
            f"{summary['status']} rev {summary['revision']}, "
            f"{ready}/{len(workloads)} workloads ready"
        )
    return doc


async def down(
    spec: Spec, reporter: Reporter, *, delete_cluster: bool, lock_wait: float
) -> dict[str, Any]:
    """Uninstalls the releases (newest first), keeping data; deletes the cluster if asked."""
    async with lock.deployment_lock(spec.cluster.name, wait=lock_wait):
        state = await cluster.observe_cluster(spec.cluster)
        # An unhealthy cluster cannot uninstall anything; it must not block its own deletion.
        if (state.exists or not _uses_kind(spec)) and not state.problems:
            access = await cluster.ensure_kubeconfig(spec.cluster, state)
            k, h = await _connect(access)
            for r in reversed(spec.releases):
                with reporter.step(f"uninstall {r.name}") as rec:
                    removed = await releases.ensure_release_absent(
                        k, h, r.name, r.namespace, timeout=r.timeout
                    )
                    rec.done("changed" if removed else "ok", "" if removed else "absent")
        if delete_cluster and _uses_kind(spec):
            with reporter.step(f"delete cluster {spec.cluster.name}") as rec:
                actions = await cluster.delete_cluster(spec.cluster)
                rec.done("changed" if actions else "ok", "" if actions else "absent")
    return {}
