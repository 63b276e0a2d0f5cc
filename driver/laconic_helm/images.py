"""Local Docker images into every node of a kind cluster, moving only what a node lacks.

For each image and node: nothing when the node holds the image's ID under the wanted name
(containerd.py says what a node holds); a re-tag when it holds it under another name;
otherwise a load (stream.py), which sends only the layers the node lacks. After the loads the
nodes are read again: an image must be complete on every node acted on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from laconic_helm import docker
from laconic_helm.actions import Action
from laconic_helm.archive import chain_ids
from laconic_helm.containerd import GC_ROOT, NodeState, ctr, get_node_state
from laconic_helm.errors import CommandError, ImageLoadError, UserError
from laconic_helm.output import human_bytes
from laconic_helm.stream import ArchiveSource, docker_save, load

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from laconic_helm.output import Reporter

NODE_ROLES = ("control-plane", "worker")

_ID_REF = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
_NO_SUCH_IMAGE = "(?i)no such image: "

STEP = "images"
Verb = Literal["retag-image", "load-image"]  # the shared vocabulary's image verbs (actions.VERBS)
Outcome = Literal["up-to-date", "retag-image", "load-image"]  # what happened to an image


def containerd_name(ref: str) -> str:
    """Returns the name containerd and kubelet use for a docker reference.

    `nginx` -> `docker.io/library/nginx:latest`, `me/app:1` -> `docker.io/me/app:1`,
    `localhost:5001/app` -> `localhost:5001/app:latest`; a digest reference keeps its digest.
    """
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if not at and ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"{domain}/{path}{at}{digest}"


@dataclass(frozen=True)
class LocalImage:
    """An image in the local Docker daemon, as the operator named it."""

    ref: str
    name: str  # containerd name
    id: str  # docker image ID: the config digest (or the index digest in containerd's store)
    diff_ids: tuple[str, ...]
    size: int
    repo_digests: tuple[str, ...] = ()  # `<registry>/<path>@<digest>` for each push docker made

    @property
    def chain_id(self) -> str:
        """The chain ID of the top layer: the snapshot containerd unpacks the image into."""
        return chain_ids(self.diff_ids)[-1] if self.diff_ids else ""


@dataclass(frozen=True)
class NodeAction:
    """One image to put on one node; `action` is its entry in the shared vocabulary."""

    image: LocalImage
    node: str
    verb: Verb
    source: str = ""  # the name to re-tag from

    @property
    def action(self) -> Action:
        detail = f"on {self.node}" + (f", from {self.source}" if self.source else "")
        return Action(STEP, self.verb, self.image.ref, detail)


@dataclass
class ImageResult:
    """One image's outcome; `as_dict` is the JSON summary's entry."""

    image: str
    id: str
    status: Outcome
    nodes: dict[str, Outcome]
    bytes_sent: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.status == "up-to-date":
            return f"  {self.image}: present on {_count(self.nodes, 'node')}"
        verb = {"retag-image": "re-tagged on", "load-image": "loaded into"}[self.status]
        touched = [n for n, a in self.nodes.items() if a != "up-to-date"]
        return (
            f"  {self.image}: {verb} {', '.join(touched)}"
            f" ({human_bytes(self.bytes_sent)} sent, {self.seconds:.1f} s)"
        )


def _count(items: Sequence[object] | Mapping[str, object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


async def list_clusters() -> list[str]:
    """Names of the kind clusters whose node containers exist (running or not)."""
    lines = await docker.node_containers(None, docker.label_format(docker.CLUSTER_LABEL))
    return sorted({line.strip() for line in lines})


async def check_cluster(cluster: str) -> list[str]:
    """Returns the node containers of `cluster`, found by kind's docker labels.

    Raises UserError for an unknown cluster, a cluster without nodes, or a node not running.
    """
    fmt = f"{{{{.Names}}}}\t{{{{.State}}}}\t{docker.label_format(docker.ROLE_LABEL)}"
    rows = [line.split("\t") for line in await docker.node_containers(cluster, fmt)]
    if not rows:
        known = await list_clusters()
        raise UserError(
            f'unknown cluster "{cluster}": no container is labelled '
            f"{docker.CLUSTER_LABEL}={cluster}",
            hint=f"clusters here: {', '.join(known)}" if known else "no kind cluster exists here",
        )
    nodes = [(row[0], row[1]) for row in rows if len(row) == 3 and row[2] in NODE_ROLES]
    if not nodes:
        names = ", ".join(sorted(row[0] for row in rows))
        raise UserError(f'cluster "{cluster}" has no nodes (its containers: {names})')
    for name, state in nodes:
        if state != "running":
            raise UserError(f'node {name} of cluster "{cluster}" is not running ({state})')
    return sorted(name for name, _ in nodes)


def check_refs(refs: Sequence[str]) -> None:
    """Raises UserError for a reference a node cannot run by (an image ID)."""
    for ref in refs:
        if _ID_REF.match(ref):
            raise UserError(f"image {ref}: give its repository:tag, not its ID (a node runs names)")


async def check_images(refs: Sequence[str]) -> list[LocalImage]:
    """Returns the local images named by `refs`, in order; raises UserError for any missing."""
    check_refs(refs)
    done = await docker.run("image", "inspect", *refs, check=False)
    if done.returncode != 0:
        errors = done.stderr.decode(errors="replace")
        missing = [
            r for r in refs if re.search(_NO_SUCH_IMAGE + re.escape(r) + r"(:|\s|$)", errors)
        ]
        if missing:
            noun = "image" if len(missing) == 1 else "images"
            raise UserError(f"{noun} not present locally: {', '.join(missing)}")
        raise CommandError(docker.argv("image", "inspect"), done.returncode, done.stderr.decode())
    found = json.loads(done.stdout)
    return [
        LocalImage(
            ref=ref,
            name=containerd_name(ref),
            id=item["Id"],
            diff_ids=tuple((item.get("RootFS") or {}).get("Layers") or ()),
            size=int(item.get("Size") or 0),
            repo_digests=tuple(item.get("RepoDigests") or ()),
        )
        for ref, item in zip(refs, found, strict=True)
    ]


async def observe_nodes(cluster: str) -> dict[str, NodeState]:
    """Reads what each node of `cluster` holds; raises UserError for a missing cluster or node."""
    nodes = await check_cluster(cluster)
    states = await asyncio.gather(*map(get_node_state, nodes))
    return dict(zip(nodes, states, strict=True))


async def check_inputs(
    cluster: str, refs: Sequence[str]
) -> tuple[list[LocalImage], dict[str, NodeState]]:
    """Checks the cluster, its nodes' containerd and the local images, all at once.

    Raises the first UserError in a fixed order: the cluster, then the images, then the nodes.
    """
    observed, images = await asyncio.gather(
        observe_nodes(cluster), check_images(list(dict.fromkeys(refs))), return_exceptions=True
    )
    for outcome in (observed, images):
        if isinstance(outcome, BaseException):
            raise outcome
    return images, observed  # type: ignore[return-value]


def plan_images(images: Sequence[LocalImage], states: Mapping[str, NodeState]) -> list[NodeAction]:
    """Decides, for each image and node, whether it needs a re-tag or a load (present: nothing)."""
    actions = []
    for image in images:
        for node, state in sorted(states.items()):
            if state.holds(image):
                continue
            if source := state.retag_source(image):
                actions.append(NodeAction(image, node, "retag-image", source))
            else:
                actions.append(NodeAction(image, node, "load-image"))
    return actions


def outcomes(
    images: Sequence[LocalImage], states: Mapping[str, NodeState], actions: Sequence[NodeAction]
) -> dict[str, dict[str, Outcome]]:
    """Per image and node: `up-to-date`, or the verb that puts it there (status and results)."""
    verbs = {(a.image.ref, a.node): a.verb for a in actions}
    return {i.ref: {n: verbs.get((i.ref, n), "up-to-date") for n in sorted(states)} for i in images}


async def ensure_images(
    cluster: str,
    refs: Sequence[str],
    reporter: Reporter,
    *,
    archive: ArchiveSource | None = None,
) -> list[ImageResult]:
    """Ensures every node of `cluster` holds each image under its name; one result per image.

    Everything is checked first (cluster, nodes, images, containerd), so bad input moves nothing.
    A re-run costs only what is missing: two docker calls and three reads per node when all is
    there. `archive` starts the process that writes the image archive (default: `docker save`).
    """
    images, states = await check_inputs(cluster, refs)
    return await apply_images(images, states, plan_images(images, states), reporter, archive)


async def apply_images(
    images: Sequence[LocalImage],
    states: Mapping[str, NodeState],
    actions: Sequence[NodeAction],
    reporter: Reporter,
    archive: ArchiveSource | None = None,
) -> list[ImageResult]:
    """Carries out planned re-tags and loads, then reads the nodes acted on again."""
    start = time.monotonic()
    sent, finished = await _apply(actions, states, reporter, archive or docker_save)
    await _verify(images, actions, states)
    done = outcomes(images, states, actions)
    results = []
    for image in images:
        nodes = done[image.ref]
        acted = set(nodes.values())
        status: Outcome = next(
            (v for v in ("load-image", "retag-image") if v in acted), "up-to-date"
        )
        seconds = finished.get(image.ref, time.monotonic()) - start
        results.append(
            ImageResult(
                image.ref, image.id, status, nodes, sent.get(image.ref, 0), round(seconds, 3)
            )
        )
    return results


def summary(results: Sequence[ImageResult]) -> str:
    """How many images each outcome had, e.g. `1 load-image, 2 up-to-date`."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


async def _apply(
    actions: Sequence[NodeAction],
    states: Mapping[str, NodeState],
    reporter: Reporter,
    archive: ArchiveSource,
) -> tuple[dict[str, int], dict[str, float]]:
    """Re-tags, then loads; returns bytes sent and the time each image was done, per ref."""
    finished: dict[str, float] = {}
    for action in actions:
        if action.verb == "retag-image":
            await ctr(action.node, "images", "tag", "--force", action.source, action.image.name)
            finished[action.image.ref] = time.monotonic()
    loads = [a for a in actions if a.verb == "load-image"]
    sent = await load(loads, states, reporter, archive) if loads else {}
    finished.update({a.image.ref: time.monotonic() for a in loads})
    return sent, finished


async def _verify(
    images: Sequence[LocalImage], actions: Sequence[NodeAction], states: Mapping[str, NodeState]
) -> None:
    """Reads the nodes acted on again: every image must now be complete there.

    Then clears this loader's GC-root marks on every node (the images own those blobs now; a
    mark left by an interrupted load of other images goes too, and its blobs may be collected).
    """
    touched = sorted({a.node for a in actions})
    reread = [get_node_state(n) for n in touched]
    after = {**states, **{s.node: s for s in await asyncio.gather(*reread)}}
    for node in touched:
        for image in images:
            if not after[node].holds(image):
                raise ImageLoadError(
                    f"image {image.ref} is not complete on node {node} after its load"
                )
    await asyncio.gather(
        *(
            ctr(state.node, "content", "label", digest, f"{GC_ROOT}=", check=False)
            for state in after.values()
            for digest in state.marked()
        )
    )
