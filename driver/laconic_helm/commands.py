"""The commands over the deploy's steps (steps.py): `deploy` observes, plans and applies each
step in turn; `plan` observes and plans them and writes nothing; `status` shows what they
observe; `down` uninstalls.

Every step observes the live state first and acts only on the difference, so a run
interrupted anywhere is finished by the next, and a run with nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from laconic_helm import (
    cluster,
    host,
    images,
    lock,
    output,
    registry,
    releases,
    verify,
    volumes,
)
from laconic_helm.errors import EXIT_BAD_INPUT, DeadlineExceeded, LaconicHelmError, UserError
from laconic_helm.helm import STOP_GRACE
from laconic_helm.helm import connect as connect_helm
from laconic_helm.kube import Kube
from laconic_helm.spec import BUILTIN_SOURCE
from laconic_helm.steps import (
    ImagesSeen,
    ImagesStep,
    Options,
    Prepared,
    RegistryStep,
    ReleaseStep,
    World,
    desired_releases,
    local_images,
    prepare,
    steps_for,
)

if TYPE_CHECKING:
    from laconic_helm.actions import Action
    from laconic_helm.cluster import ClusterAccess
    from laconic_helm.helm import Helm
    from laconic_helm.output import Reporter
    from laconic_helm.spec import Spec

__all__ = ["Options", "deploy", "down", "plan", "status", "watch_status"]

MIN_DEADLINE = 2 * STOP_GRACE  # below this no helm step could be stopped cleanly in time


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


async def _connect(access: ClusterAccess) -> tuple[Kube, Helm]:
    kube = Kube.connect(access.kubeconfig, access.context)
    helm = await connect_helm(kubeconfig=access.kubeconfig, context=access.context)
    return kube, helm


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
            prepared = await prepare(spec, opts)
            assert prepared is not None  # without a problems list, every problem raises
            rec.done("ok", f"{len(prepared.desired)} releases, {len(spec.images)} images")
        world = World(spec, opts, prepared, reporter, deadline)
        for step in steps_for(spec, prepared.desired):
            current.append(step.name)
            with reporter.step(step.name) as rec:
                seen = await step.observe(world)
                done = await step.apply(world, seen, step.plan(world, seen))
                rec.done(done.status, done.detail, **done.data)
    return {}


async def plan(spec: Spec, reporter: Reporter, opts: Options) -> dict[str, Any]:
    """Lists what `deploy` would do against the live state, or every problem that would stop
    it (exit 2); writes nothing."""
    reporter.line(f"spec: {describe_source(spec)}")
    problems: list[LaconicHelmError] = []
    host.check_tuning(spec, reporter, strict=opts.strict_host)
    with reporter.step("preflight") as rec:
        prepared = await prepare(spec, opts, problems)
        if prepared is None:
            rec.done("failed", f"{len(problems)} problem(s) would stop the deploy")
    if prepared is None:
        messages = [_message(p) for p in problems]
        for message in messages:
            reporter.line(f"  ✗ {message}")
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        return {
            "ok": False,
            "exit_code": EXIT_BAD_INPUT,
            "error": f"{messages[0]}{more}",
            "problems": messages,
            "actions": [],
            "spec": str(spec.source),
        }
    world = World(spec, opts, prepared, reporter)
    planned: list[Action] = []
    effects: list[str] = []
    for step in steps_for(spec, prepared.desired):
        seen = await step.observe(world)
        actions = step.plan(world, seen)
        step.foresee(world, actions)
        planned += actions
        if isinstance(step, ReleaseStep):
            effects += step.effects(seen)
    shown = output.plan_lines(planned, effects, reporter)
    return {
        "actions": [a.line() for a in shown],
        "objects": effects,
        "changed": False,
        "spec": str(spec.source),
    }


def describe_source(spec: Spec) -> str:
    """Which spec a run used: the operator may not know there was no ./deployment.yaml."""
    if spec.source is None or str(spec.source) == BUILTIN_SOURCE:
        return "the built-in default (Caddy + agave test node on kind; no ./deployment.yaml here)"
    return str(spec.source)


def _message(exc: LaconicHelmError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


async def status(spec: Spec, reporter: Reporter) -> dict[str, Any]:
    """Reports cluster, nodes, images and releases as the steps observe them; writes nothing."""
    state = await cluster.observe_cluster(spec.cluster)
    doc: dict[str, Any] = {"cluster": state.summary(), "images": {}, "releases": []}
    reporter.line(output.cluster_line(state, kind=spec.cluster.provider == "kind"))
    if state.problems or not (state.exists or spec.cluster.provider == "existing"):
        return doc
    found = await local_images(spec)
    access = cluster.access_of(spec.cluster)
    helm = await connect_helm(kubeconfig=access.kubeconfig, context=access.context)
    prepared = Prepared(desired_releases(spec, found), state, helm, found)
    world = World(spec, Options(), prepared, reporter)
    for step in steps_for(spec, prepared.desired):
        seen = await step.observe(world)
        if isinstance(seen, ImagesSeen):  # streamed (also a registry step's fallback)
            planned = images.plan_images(found, seen.nodes)
            doc["images"] = images.outcomes(found, seen.nodes, planned)
        elif isinstance(step, RegistryStep):
            doc["images"] = registry.outcomes(step.target, found, seen)
        if isinstance(step, (ImagesStep, RegistryStep)):
            for line in output.image_lines(doc["images"]):
                reporter.line(line)
        elif isinstance(step, ReleaseStep):
            assert world.kube is not None  # the cluster step connected it
            doc["releases"].append(await _release_status(world.kube, step, seen.state, reporter))
    return doc


async def _release_status(
    kube: Kube, step: ReleaseStep, state: releases.ReleaseState, reporter: Reporter
) -> dict[str, Any]:
    """The release's observation, its workloads, the node's own health and its volumes."""
    release = step.release
    summary = state.summary()
    workloads = await kube.list_workloads(release.namespace)
    summary["workloads"] = {w.name: w.is_ready() for w in workloads}
    reporter.line(output.release_line(release.name, summary))
    if release.verify is not None:  # the node's own view: slot, lag, version, identity
        node = await verify.read_health(release.verify.url, release.verify.host)
        summary["node"] = node.as_dict()
        reporter.line(node.line(release.name))
    selector = f"app.kubernetes.io/instance={release.name}"
    running = [
        p
        for p in await kube.list_pods(release.namespace, selector)
        if p.get("status", {}).get("phase") == "Running"
    ]
    spaces = [s for p in running for s in await volumes.volume_space(kube, p)]
    summary["volumes"] = [s.as_dict() for s in spaces]
    for space in spaces:
        reporter.line(f"  {space.line()}")
    return summary


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
        if spec.cluster.provider == "kind" and not state.exists:
            reporter.line(f"cluster {spec.cluster.name} does not exist: nothing to uninstall")
        elif state.problems:
            reporter.line(
                f"cluster {spec.cluster.name}: releases left as they are, the cluster is not "
                f"healthy ({'; '.join(state.problems)})"
            )
        else:
            kube, helm = await _connect(await cluster.ensure_kubeconfig(spec.cluster, state))
            for r in reversed(spec.releases):
                with reporter.step(f"uninstall {r.name}") as rec:
                    removed = await releases.ensure_release_absent(
                        kube, helm, r.name, r.namespace, timeout=r.timeout
                    )
                    rec.done("changed" if removed else "ok", "" if removed else "absent")
        if delete_cluster and spec.cluster.provider == "kind":
            with reporter.step(f"delete cluster {spec.cluster.name}") as rec:
                actions = await cluster.delete_cluster(spec.cluster)
                rec.done("changed" if actions else "ok", "" if actions else "absent")
            with reporter.step(f"remove registry of {spec.cluster.name}") as rec:
                removed = await registry.remove_local(spec.cluster.name)
                rec.done("changed" if removed else "ok", "volume kept" if removed else "absent")
    return {}
