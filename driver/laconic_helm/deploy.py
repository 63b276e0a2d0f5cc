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
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from laconic_helm import (
    cluster,
    host,
    images,
    lock,
    preflight,
    releases,
    retire,
    verify,
    volumes,
)
from laconic_helm.errors import EXIT_BAD_INPUT, DeadlineExceeded, LaconicHelmError, UserError
from laconic_helm.helm import STOP_GRACE
from laconic_helm.helm import connect as connect_helm
from laconic_helm.kube import Kube
from laconic_helm.spec import BUILTIN_SOURCE

if TYPE_CHECKING:
    from laconic_helm.cluster import ClusterAccess, ClusterState
    from laconic_helm.helm import Helm
    from laconic_helm.output import Reporter
    from laconic_helm.plan import Action
    from laconic_helm.spec import Release, Spec

T = TypeVar("T")
MIN_DEADLINE = 2 * STOP_GRACE  # below this no helm step could be stopped cleanly in time


@dataclass(frozen=True)
class Options:
    """How a deploy may act, beyond what the spec says."""

    deadline: float | None = None  # seconds the whole run may take
    lock_wait: float = 60.0  # seconds to wait for another run of the same deployment
    recreate_cluster: bool = False  # rebuild a cluster whose ports/mounts differ (ours only)
    adopt_cluster: bool = False  # treat a same-named cluster this tool did not create as ours
    strict_host: bool = False  # a host short of what agave needs refuses the run (exit 2)
    restart_window: bool = True  # an upgrade restarting a serving rpc/validator node waits


@dataclass(frozen=True)
class Prepared:
    """Everything preflight learned; deploy acts on it without asking again."""

    desired: tuple[releases.DesiredRelease, ...]
    cluster_state: ClusterState
    helm: Helm  # bound to the cluster's access already: one `helm version` per run


def _uses_kind(spec: Spec) -> bool:
    return spec.cluster.provider == "kind"


async def _image_ids(spec: Spec) -> dict[str, str]:
    """The local IDs of the spec's images (loaded into kind only); raises for a missing one."""
    if not (spec.images and _uses_kind(spec)):
        return {}
    return {i.ref: i.id for i in await images.check_images(spec.images)}


def _desired(spec: Spec, image_ids: dict[str, str]) -> tuple[releases.DesiredRelease, ...]:
    """Reads every release's inputs; the IDs of the images it runs are part of its digest."""
    return tuple(
        releases.desired_release(
            r, extras={f"image/{ref}": image_ids[ref] for ref in r.images if ref in image_ids}
        )
        for r in spec.releases
    )


async def _desired_releases(spec: Spec) -> tuple[releases.DesiredRelease, ...]:
    return _desired(spec, await _image_ids(spec))


async def _together(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs reads at once; the first error stops the others before it is raised (gather would
    leave them to asyncio.run's shutdown, where a cancelled read could wait for ever)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


async def _attempt(work: Awaitable[T], problems: list[LaconicHelmError] | None) -> T | None:
    """Awaits one check; with `problems`, a bad-input error is noted there (None returned) so
    the other checks still run. Any other error, or without `problems`, is raised."""
    try:
        return await work
    except LaconicHelmError as exc:
        if problems is None or exc.exit_code != EXIT_BAD_INPUT:
            raise
        problems.append(exc)
        return None


async def _preflight(
    spec: Spec, opts: Options, problems: list[LaconicHelmError] | None = None
) -> Prepared | None:
    """Checks tools, files, images and the host; raises before any side effect. Given
    `problems`, it runs every check it can and collects what is wrong there instead (None is
    returned when anything is): `plan` lists them all in one run."""
    # Independent reads, at once: a re-run spends most of its time waiting on these processes.
    access = cluster.access_of(spec.cluster)
    _, helm, image_ids, state = await _together(
        _attempt(preflight.check_tools(spec.cluster), problems),
        _attempt(connect_helm(kubeconfig=access.kubeconfig, context=access.context), problems),
        _attempt(_image_ids(spec), problems),
        _attempt(cluster.observe_cluster(spec.cluster), problems),
    )
    # Without the image IDs (an image is missing) the digests are off, the renders are not.
    desired = await _attempt(asyncio.to_thread(_desired, spec, image_ids or {}), problems)
    # The charts' own checks refuse a values mistake now.
    if helm is not None and desired is not None:
        await _together(*(_attempt(releases.check_renders(helm, r), problems) for r in desired))
    if state is not None:
        await _attempt(preflight.check_host(spec.cluster, state), problems)
        # Planning raises for a cluster we may not touch (not ours, or incompatible).
        await _attempt(_plan_cluster(spec, state, opts), problems)
    if problems or helm is None or image_ids is None or desired is None or state is None:
        return None
    return Prepared(desired, state, helm)


async def _plan_cluster(spec: Spec, state: ClusterState, opts: Options) -> list[Action]:
    return cluster.plan_cluster(
        spec.cluster, state, recreate=opts.recreate_cluster, adopt=opts.adopt_cluster
    )


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
    opts: Options,
    reporter: Reporter,
) -> tuple[releases.ReleaseOutcome, list[Action]]:
    """The release, then the removal of what it replaces (its `retire` section).

    While an old workload is still there the upgrade does not wait for readiness: the new pods
    may need what the old ones hold (host ports, the ledger), and those go only once the
    release is deployed. The wait the release asks for comes after the removal instead.
    """
    leftovers = await retire.observe_retire(k, release)
    held = desired.wait and retire.replaces_workload(leftovers)
    run = dataclasses.replace(desired, wait=False) if held else desired
    outcome = await releases.ensure_release(
        k, h, run, deadline=deadline, restart_window=opts.restart_window, progress=reporter.line
    )
    retired = await retire.ensure_retired(k, release)
    if held:
        await retire.wait_ready(k, desired.name, desired.namespace, timeout=desired.timeout)
    return outcome, retired


async def deploy(spec: Spec, reporter: Reporter, opts: Options) -> dict[str, Any]:
    """Brings cluster, images and releases to the spec; returns the report's extra fields."""
    if opts.deadline is not None and opts.deadline < MIN_DEADLINE:
        raise UserError(
            f"--deadline: {opts.deadline:g} s is too short; give at least {MIN_DEADLINE:g}"
        )
    host.check_tuning(spec, reporter, strict=opts.strict_host)
    deadline = time.monotonic() + opts.deadline if opts.deadline is not None else None
    current: list[str] = []
    async with (
        lock.deployment_lock(spec.cluster.name, wait=opts.lock_wait),
        _budget(deadline, current),
    ):
        current.append("preflight")
        with reporter.step("preflight") as rec:
            prepared = await _preflight(spec, opts)
            assert prepared is not None  # without a problems list, every problem raises
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
                outcome, retired = await _ensure_release(
                    k, h, release, desired, deadline, opts, reporter
                )
                lines = [a.line() for a in (*outcome.actions, *retired)]
                waited = (
                    {} if outcome.restart_wait is None else {"restart_wait": outcome.restart_wait}
                )
                rec.done(
                    "changed" if outcome.changed or retire.removed(retired) else "ok",
                    "; ".join(lines),
                    actions=lines,
                    revision=outcome.revision,
                    digest=outcome.digest,
                    **waited,
                )

        for r in spec.releases:
            if r.verify is not None:
                current.append(f"verify {r.name}")
                with reporter.step(f"verify {r.name}") as rec:
                    probe = await verify.probe_rpc(r.verify.url, r.verify.host)
                    rec.done("ok" if probe.ok else "warning", probe.detail, **probe.as_dict())
    return {}


async def plan(spec: Spec, reporter: Reporter, opts: Options) -> dict[str, Any]:
    """Lists what `deploy` would do against the live state, or every problem that would stop
    it (exit 2); writes nothing."""
    reporter.line(f"spec: {describe_source(spec)}")
    problems: list[LaconicHelmError] = []
    host.check_tuning(spec, reporter, strict=opts.strict_host)
    with reporter.step("preflight") as rec:
        prepared = await _preflight(spec, opts, problems)
        if prepared is None:
            rec.done("failed", f"{len(problems)} problem(s) would stop the deploy")
    if prepared is None:
        for problem in problems:
            reporter.line(f"  ✗ {_message(problem)}")
        first = _message(problems[0])
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        return {
            "ok": False,
            "exit_code": EXIT_BAD_INPUT,
            "error": f"{first}{more}",
            "problems": [_message(p) for p in problems],
            "actions": [],
            "spec": str(spec.source),
        }
    state = prepared.cluster_state
    planned = await _plan_cluster(spec, state, opts)
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
                *releases.plan_release(desired, observed, restart_window=opts.restart_window),
                *releases.plan_objects(desired, observed),
                *retire.plan_retire(release, await retire.observe_retire(k, release)),
            ]
            lines += [a.line() for a in actions if a.verb != "up-to-date"]
    else:
        lines += [a.line() for a in cluster.plan_runtime_class(spec.cluster, None)]
        lines += [f"release/{d.name}: install {d.target}" for d in prepared.desired]
    for line in lines or ["nothing to do: the deployment matches the spec"]:
        reporter.line(line)
    return {"actions": lines, "changed": False, "spec": str(spec.source)}


def describe_source(spec: Spec) -> str:
    """Which spec a run used: the operator may not know there was no ./deployment.yaml."""
    if spec.source is None or str(spec.source) == BUILTIN_SOURCE:
        return "the built-in default (Caddy + agave test node on kind; no ./deployment.yaml here)"
    return str(spec.source)


def _message(exc: LaconicHelmError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


async def status(spec: Spec, reporter: Reporter) -> dict[str, Any]:
    """Reports cluster, nodes, images and releases as they are; writes nothing."""
    state = await cluster.observe_cluster(spec.cluster)
    doc: dict[str, Any] = {"cluster": state.summary(), "images": {}, "releases": []}
    if _uses_kind(spec) and not state.exists:
        reporter.line(f"✗ cluster {state.name}: does not exist (`laconic-helm deploy` creates it)")
        return doc
    healthy = not state.problems
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
        if r.verify is not None:  # the node's own view: slot, lag, version, identity
            node = await verify.read_health(r.verify.url, r.verify.host)
            summary["node"] = node.as_dict()
            reporter.line(node.line(r.name))
        running = [
            p
            for p in await k.list_pods(r.namespace, f"app.kubernetes.io/instance={r.name}")
            if p.get("status", {}).get("phase") == "Running"
        ]
        spaces = [s for p in running for s in await volumes.volume_space(k, p)]
        summary["volumes"] = [s.as_dict() for s in spaces]
        for space in spaces:
            reporter.line(f"  {space.line()}")
    return doc


async def watch_status(spec: Spec, reporter: Reporter, interval: float) -> dict[str, Any]:
    """`status` again every `interval` seconds until Ctrl-C (or SIGTERM), which is how a watch
    ends: the run then finishes normally with the last report."""
    doc: dict[str, Any] = {}
    try:
        while True:
            reporter.line(f"— {time.strftime('%H:%M:%S')}")
            doc = await status(spec, reporter)
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        return doc


async def down(
    spec: Spec, reporter: Reporter, *, delete_cluster: bool, lock_wait: float
) -> dict[str, Any]:
    """Uninstalls the releases (newest first), keeping data; deletes the cluster if asked."""
    async with lock.deployment_lock(spec.cluster.name, wait=lock_wait):
        state = await cluster.observe_cluster(spec.cluster)
        # An unhealthy cluster cannot uninstall anything; it must not block its own deletion.
        if _uses_kind(spec) and not state.exists:
            reporter.line(f"cluster {spec.cluster.name} does not exist: nothing to uninstall")
        elif state.problems:
            reporter.line(
                f"cluster {spec.cluster.name}: releases left as they are, the cluster is not "
                f"healthy ({'; '.join(state.problems)})"
            )
        else:
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
