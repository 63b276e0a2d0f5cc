"""The deploy as one list of steps, each with observe, plan and apply.

Preflight checks everything first and touches nothing; then come the steps: the cluster, the
images (kind only), each release in order, each release's RPC check. A step's `observe` only
reads, its `plan` is pure and returns the shared `Action`s (actions.VERBS), its `apply` carries
them out, re-checking as it goes. `plan` is observe + plan over the list, `deploy` adds apply,
and `status` shows the observations, so none of them keeps its own copy of the sequence.

When `plan` finds the cluster still to be made (or rebuilt), the steps after it observe the
empty cluster `deploy` will find there: the plan then lists what that deploy will do.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from laconic_helm import (
    cluster,
    containerd,
    images,
    preflight,
    pullsecret,
    registry,
    releases,
    retire,
    verify,
)
from laconic_helm.concurrency import together
from laconic_helm.desired import DesiredRelease, check_renders, desired_release
from laconic_helm.errors import EXIT_BAD_INPUT, LaconicHelmError
from laconic_helm.helm import connect as connect_helm
from laconic_helm.kube import Kube

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from laconic_helm.actions import Action
    from laconic_helm.cluster import ClusterState
    from laconic_helm.helm import Helm
    from laconic_helm.output import Reporter, StepStatus
    from laconic_helm.spec import Cluster, Release, Spec

T = TypeVar("T")
Seen = TypeVar("Seen")

# kind names the node of a one-node cluster so; `plan` for a cluster still to be made uses it.
_CONTROL_PLANE = "{name}-control-plane"
# A cluster action after which the steps that follow find a new, empty cluster.
_REBUILDS = frozenset({"create-cluster"})


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
    """Everything preflight learned; the steps act on it without asking again."""

    desired: tuple[DesiredRelease, ...]
    cluster_state: ClusterState
    helm: Helm  # bound to the cluster's access already: one `helm version` per run
    images: tuple[images.LocalImage, ...]  # the spec's local images, inspected once


@dataclass
class World:
    """What the steps of one run share."""

    spec: Spec
    opts: Options
    prepared: Prepared
    reporter: Reporter
    deadline: float | None = None  # time.monotonic() by which the run stops
    kube: Kube | None = None  # None while the cluster cannot be reached (or is to be made)
    made_namespaces: set[str] = field(default_factory=set)  # plan: an earlier step makes them
    pinned: dict[str, str] | None = None  # registry mode: image ref -> the reference pods run
    pull_config: bytes | None = None  # registry mode: the credentials Secret's content

    @property
    def helm(self) -> Helm:
        return self.prepared.helm


@dataclass(frozen=True)
class Done:
    """How a step's apply went: its line's status and detail, and the JSON report's data."""

    status: StepStatus
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def carried_out(actions: Sequence[Action], **data: Any) -> Done:
    """The Done of a step whose actions were all carried out."""
    lines = [a.line() for a in actions]
    changed = any(a.changes for a in actions)
    return Done("changed" if changed else "ok", "; ".join(lines), {"actions": lines, **data})


class Step(ABC, Generic[Seen]):
    """One step of the deploy: observe (reads), plan (pure), apply (acts on the plan)."""

    name: str

    @abstractmethod
    async def observe(self, world: World) -> Seen: ...

    @abstractmethod
    def plan(self, world: World, seen: Seen) -> list[Action]: ...

    @abstractmethod
    async def apply(self, world: World, seen: Seen, actions: Sequence[Action]) -> Done: ...

    def foresee(self, world: World, actions: Sequence[Action]) -> None:
        """For `plan`, which applies nothing: what the steps after this one may assume once
        `actions` are done."""


# -- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSeen:
    state: ClusterState
    runtime_class: dict[str, Any] | None  # the live high-memlock RuntimeClass, if reachable


class ClusterStep(Step[ClusterSeen]):
    """The kind cluster (or an existing one's health) and the cluster-wide objects."""

    def __init__(self, spec: Spec) -> None:
        self.cluster = spec.cluster
        self.name = f"cluster {spec.cluster.name}"

    async def observe(self, world: World) -> ClusterSeen:
        state = world.prepared.cluster_state  # preflight's: the first step comes right after
        live = None
        if state.problems or not (state.exists or self.cluster.provider == "existing"):
            world.kube = None
        else:
            world.kube = await _connect(self.cluster, state)
            if self.cluster.high_memlock:
                live = await cluster.observe_runtime_class(world.kube)
        return ClusterSeen(state, live)

    def plan(self, world: World, seen: ClusterSeen) -> list[Action]:
        opts = world.opts
        actions = cluster.plan_cluster(
            self.cluster, seen.state, recreate=opts.recreate_cluster, adopt=opts.adopt_cluster
        )
        fresh = world.kube is None or any(a.verb in _REBUILDS for a in actions)
        live = None if fresh else seen.runtime_class
        return [*actions, *cluster.plan_runtime_class(self.cluster, live)]

    async def apply(self, world: World, seen: ClusterSeen, actions: Sequence[Action]) -> Done:
        made = [a for a in actions if a.verb != "create-runtime-class"]
        result = await cluster.converge_cluster(self.cluster, seen.state, made)
        world.kube = Kube.connect(result.access.kubeconfig, result.access.context)
        if len(made) < len(actions):
            await cluster.ensure_runtime_class(self.cluster, world.kube)
        return carried_out(actions)

    def foresee(self, world: World, actions: Sequence[Action]) -> None:
        if any(a.verb in _REBUILDS for a in actions):
            world.kube = None


async def _connect(where: Cluster, state: ClusterState) -> Kube:
    access = await cluster.ensure_kubeconfig(where, state)
    return Kube.connect(access.kubeconfig, access.context)


# -- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagesSeen:
    nodes: dict[str, containerd.NodeState]


class ImagesStep(Step[ImagesSeen]):
    """The spec's local images in every node of a kind cluster."""

    def __init__(self, spec: Spec) -> None:
        self.cluster = spec.cluster.name
        self.name = f"images into {self.cluster}"

    async def observe(self, world: World) -> ImagesSeen:
        if world.kube is None:  # a cluster still to be made: its one node will hold nothing
            node = _CONTROL_PLANE.format(name=self.cluster)
            return ImagesSeen({node: containerd.NodeState(node, {}, {})})
        return ImagesSeen(await images.observe_nodes(self.cluster))

    def plan(self, world: World, seen: ImagesSeen) -> list[Action]:
        return [a.action for a in self.plan_nodes(world, seen)]

    def plan_nodes(self, world: World, seen: ImagesSeen) -> list[images.NodeAction]:
        """The plan with what the loader needs for each action (image, node, re-tag source)."""
        return images.plan_images(world.prepared.images, seen.nodes)

    async def apply(self, world: World, seen: ImagesSeen, actions: Sequence[Action]) -> Done:
        planned = [a for a in self.plan_nodes(world, seen) if a.action in actions]
        results = await images.apply_images(
            world.prepared.images, seen.nodes, planned, world.reporter
        )
        for result in results:
            world.reporter.line(result.line())
        done = carried_out(actions, images=[r.as_dict() for r in results])
        summary = images.summary(results)
        return dataclasses.replace(done, detail="; ".join(filter(None, [done.detail, summary])))


class RegistryStep(Step["registry.RegistrySeen | ImagesSeen"]):
    """The spec's images through a registry: the local registry container and the nodes' host
    config (kind), the pushes, then (kind) a pull into every node. The releases after it run
    the images by the digests it pushed.

    With the mode left to its default, a kind cluster whose nodes read no registry host config
    (made before registry mode; the setting is fixed at creation) is streamed into instead, and
    its releases run the images by tag, as before.
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.target = registry.where(spec)
        self.name = f"images via {self.target.prefix}"
        self.stream = ImagesStep(spec) if spec.image_delivery.mode is None else None

    async def _nodes(self, world: World) -> dict[str, containerd.NodeState]:
        if self.spec.cluster.provider != "kind":
            return {}  # nodes of another cluster are not ours to reach: kubelet pulls
        if world.kube is None:  # a cluster still to be made: its one node will hold nothing
            node = _CONTROL_PLANE.format(name=self.spec.cluster.name)
            return {node: containerd.NodeState(node, {}, {})}
        return await images.observe_nodes(self.spec.cluster.name)

    async def observe(self, world: World) -> registry.RegistrySeen | ImagesSeen:
        nodes = await self._nodes(world)
        made = world.kube is not None
        local = made and self.target.local
        if self.stream and local and not await registry.reads_hosts(sorted(nodes)):
            world.pinned = {}  # by tag, as streamed images are named
            return ImagesSeen(nodes)
        unchecked = made and self.stream is None  # else reads_hosts said yes above
        found = world.prepared.images
        seen = await registry.observe(self.target, found, nodes, check_nodes=unchecked)
        world.pinned = registry.references(self.target, world.prepared.images, seen)
        if world.kube is not None:
            world.pull_config = await pullsecret.read_credentials(world.kube, self.target)
        return seen

    def plan(self, world: World, seen: registry.RegistrySeen | ImagesSeen) -> list[Action]:
        if isinstance(seen, ImagesSeen):
            assert self.stream is not None
            return self.stream.plan(world, seen)
        return registry.plan(self.target, world.prepared.images, seen)

    async def apply(
        self, world: World, seen: registry.RegistrySeen | ImagesSeen, actions: Sequence[Action]
    ) -> Done:
        if isinstance(seen, ImagesSeen):
            assert self.stream is not None
            world.reporter.line(
                f"  streaming: the nodes of {self.spec.cluster.name} read no registry host "
                f"config (made before registry mode)"
            )
            return await self.stream.apply(world, seen, actions)
        results, world.pinned = await registry.apply(
            self.target, world.prepared.images, seen, actions, world.reporter
        )
        for result in results:
            world.reporter.line(result.line())
        return carried_out(actions, images=[r.as_dict() for r in results])


# -- releases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseSeen:
    state: releases.ReleaseState
    leftovers: tuple[retire.Leftover, ...]  # what is left of its `retire` section


class ReleaseStep(Step[ReleaseSeen]):
    """One Helm release, then the removal of what it replaces (its `retire` section)."""

    def __init__(self, release: Release, desired: DesiredRelease) -> None:
        self.release = release
        self.desired = desired
        self.name = f"release {desired.name}"

    async def observe(self, world: World) -> ReleaseSeen:
        if world.pinned is not None and self.release.images:
            pinned = {ref: world.pinned[ref] for ref in self.release.images if ref in world.pinned}
            config = world.pull_config
            # A push gave another digest than docker knew, or the credentials Secret was read.
            if pinned != self.desired.pinned or (config and config != _pull_config(self.desired)):
                found = world.prepared.images
                self.desired = release_desired(world.spec, self.release, found, pinned, config)
        if world.kube is None:
            state = await releases.observe_absent(world.helm, self.desired)
            leftovers: list[retire.Leftover] = []
        else:
            state = await releases.observe_release(world.kube, world.helm, self.desired)
            leftovers = await retire.observe_retire(world.kube, self.release)
        if self.desired.namespace in world.made_namespaces:
            state = dataclasses.replace(state, namespace_exists=True)
        return ReleaseSeen(state, tuple(leftovers))

    def plan(self, world: World, seen: ReleaseSeen) -> list[Action]:
        restart_window = world.opts.restart_window
        return [
            *releases.plan_release(self.desired, seen.state, restart_window=restart_window),
            *retire.plan_retire(self.release, seen.leftovers),
        ]

    def effects(self, seen: ReleaseSeen) -> list[str]:
        """What the upgrade will do to each object, for `plan` to show (helm's doing)."""
        return releases.plan_objects(self.desired, seen.state)

    async def apply(self, world: World, seen: ReleaseSeen, actions: Sequence[Action]) -> Done:
        """While an old workload is still there the upgrade does not wait for readiness: the
        new pods may need what the old ones hold (host ports, the ledger), and those go only
        once the release is deployed. The wait the release asks for comes after the removal.
        """
        assert world.kube is not None  # the cluster step connected it
        desired = self.desired
        held = desired.wait and retire.replaces_workload(seen.leftovers)
        run = dataclasses.replace(desired, wait=False) if held else desired
        retiring = [a for a in actions if a.verb in ("retire-object", "keep-object")]
        upgrade = [a for a in actions if a not in retiring]
        outcome = await releases.apply_release(
            world.kube,
            world.helm,
            run,
            seen.state,
            upgrade,
            deadline=world.deadline,
            progress=world.reporter.line,
        )
        retired = await retire.apply_retired(world.kube, self.release, retiring)
        if held:
            await retire.wait_ready(
                world.kube, desired.name, desired.namespace, timeout=desired.timeout
            )
        waited = {} if outcome.restart_wait is None else {"restart_wait": outcome.restart_wait}
        return carried_out(
            [*outcome.actions, *retired],
            revision=outcome.revision,
            digest=outcome.digest,
            **waited,
        )

    def foresee(self, world: World, actions: Sequence[Action]) -> None:
        world.made_namespaces.update(a.target for a in actions if a.verb == "create-namespace")


# -- the node's RPC, through the ingress ------------------------------------------------------


class VerifyStep(Step[None]):
    """A JSON-RPC call through the ingress, as a user makes it: reported, never fatal."""

    def __init__(self, release: Release) -> None:
        assert release.verify is not None
        self.check = release.verify
        self.name = f"verify {release.name}"

    async def observe(self, world: World) -> None:
        return None

    def plan(self, world: World, seen: None) -> list[Action]:
        return []

    async def apply(self, world: World, seen: None, actions: Sequence[Action]) -> Done:
        probe = await verify.probe_rpc(self.check.url, self.check.host)
        return Done("ok" if probe.ok else "warning", probe.detail, probe.as_dict())


def steps_for(spec: Spec, desired: Sequence[DesiredRelease]) -> list[Step[Any]]:
    """The deploy's steps after preflight, in order."""
    found: list[Step[Any]] = [ClusterStep(spec)]
    if spec.images:
        found.append(ImagesStep(spec) if spec.delivery_mode == "stream" else RegistryStep(spec))
    found += [ReleaseStep(r, d) for r, d in zip(spec.releases, desired, strict=True)]
    found += [VerifyStep(r) for r in spec.releases if r.verify is not None]
    return found


# -- preflight --------------------------------------------------------------------------------


async def local_images(spec: Spec) -> tuple[images.LocalImage, ...]:
    """The spec's local images; raises for a missing one (or, in registry mode, one that has
    no repository:tag to be pushed under)."""
    found = tuple(await images.check_images(spec.images)) if spec.images else ()
    if spec.delivery_mode == "registry":
        registry.check_local_images(found)
    return found


def _pull_config(desired: DesiredRelease) -> bytes | None:
    found = (s for s in desired.secrets if s.name == pullsecret.NAME)
    return next((s.data[pullsecret.DOCKER_CONFIG_KEY] for s in found), None)


def release_desired(
    spec: Spec,
    release: Release,
    found: Sequence[images.LocalImage],
    pinned: Mapping[str, str] | None = None,
    pull_config: bytes | None = None,
) -> DesiredRelease:
    """One release's desired state: the IDs of the images it runs are part of its digest; in
    registry mode it runs them by `pinned` (default: the digests docker last pushed) and pulls
    with `pull_config` (the credentials Secret's) or this host's login to the registry."""
    ids = {i.ref: i.id for i in found}
    extras = {f"image/{ref}": ids[ref] for ref in release.images if ref in ids}
    if spec.delivery_mode != "registry" or not release.images:
        return desired_release(release, extras=extras)
    target = registry.where(spec)
    if pinned is None:
        ours = [i for i in found if i.ref in release.images]
        pinned = registry.predicted_references(target, ours)
    secret = pullsecret.desired(target, release.namespace, pull_config)
    return desired_release(release, extras=extras, pinned=pinned, pull_secret=secret)


def desired_releases(spec: Spec, found: Sequence[images.LocalImage]) -> tuple[DesiredRelease, ...]:
    """Reads every release's inputs (see `release_desired`)."""
    return tuple(release_desired(spec, r, found) for r in spec.releases)


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


async def prepare(
    spec: Spec, opts: Options, problems: list[LaconicHelmError] | None = None
) -> Prepared | None:
    """Checks tools, files, images and the host; raises before any side effect. Given
    `problems`, it runs every check it can and collects what is wrong there instead (None is
    returned when anything is): `plan` lists them all in one run."""
    # Independent reads, at once: a re-run spends most of its time waiting on these processes.
    access = cluster.access_of(spec.cluster)
    _, helm, found, state = await together(
        _attempt(preflight.check_tools(spec.cluster), problems),
        _attempt(connect_helm(kubeconfig=access.kubeconfig, context=access.context), problems),
        _attempt(local_images(spec), problems),
        _attempt(cluster.observe_cluster(spec.cluster), problems),
    )
    # Without the image IDs (an image is missing) the digests are off, the renders are not.
    desired = await _attempt(asyncio.to_thread(desired_releases, spec, found or ()), problems)
    # The charts' own checks refuse a values mistake now.
    if helm is not None and desired is not None:
        await together(*(_attempt(check_renders(helm, r), problems) for r in desired))
    await _attempt(preflight.check_registry_port(spec), problems)
    if state is not None:
        await _attempt(preflight.check_host(spec.cluster, state), problems)
        # Planning raises for a cluster we may not touch (not ours, or incompatible).
        await _attempt(_plan_cluster(spec, state, opts), problems)
    if problems or helm is None or found is None or desired is None or state is None:
        return None
    return Prepared(desired, state, helm, found)


async def _plan_cluster(spec: Spec, state: ClusterState, opts: Options) -> list[Action]:
    return cluster.plan_cluster(
        spec.cluster, state, recreate=opts.recreate_cluster, adopt=opts.adopt_cluster
    )
