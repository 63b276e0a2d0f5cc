"""Loads local Docker images into every node of a kind cluster, moving only what a node lacks.

For each image and node: nothing when the node holds the image's ID under the wanted name; a
re-tag when it holds it under another name; otherwise one `docker save` of every image some node
lacks streams (no temp file) into each such node's `ctr images import`, as an OCI layout that
leaves out the layer blobs the node already has (see `archive`).

An image counts as present only when its name points at the ID and containerd has unpacked it
(the config carries the snapshot label the unpacker sets last), so a load killed half-way never
passes for done. Layer blobs sent during a load are marked as GC roots while it runs, so a killed
load keeps what reached the node and the next run sends only the rest; the marks go once every
image is in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import tomllib
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from laconic_helm import docker, proc
from laconic_helm.archive import (
    ArchiveImage,
    PipeWriter,
    Relay,
    Target,
    TarReader,
    TarWriter,
    TruncatedArchive,
    chain_ids,
    open_pipe,
)
from laconic_helm.errors import CommandError, ImageLoadError, UserError
from laconic_helm.output import human_bytes
from laconic_helm.plan import Action

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from laconic_helm.output import Progress, Reporter

NODE_ROLES = ("control-plane", "worker")
NAMESPACE = "k8s.io"  # where kubelet's CRI looks for images
DEFAULT_SNAPSHOTTER = "overlayfs"
GC_ROOT = "containerd.io/gc.root"
HOLD_MARK = "laconic-helm-load"  # the gc.root value this loader sets and clears
HOLD_MIN_BYTES = 32 << 20  # smaller blobs cost less to resend than to mark and unmark
SNAPSHOT_LABEL = "containerd.io/gc.ref.snapshot."
_HOLD_LAG = 0.3  # seconds between a blob's last byte and a try to mark it (each try is an exec)
_CONTENT_REF = "containerd.io/gc.ref.content."
_CONFIG_LABEL = _CONTENT_REF + "config"
_MANIFEST_LABEL = _CONTENT_REF + "m."
_SAVE_PLATFORM_API = (1, 48)  # first Docker API whose `docker save` takes --platform
_OUTPUT_TAIL = 64 << 10

_ID_REF = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
_NO_SUCH_IMAGE = "(?i)no such image: "
_IMAGE_ROW = re.compile(r"^(\S+)\s+\S+\s+(sha256:[0-9a-f]{64})\s")
_CONTENT_ROW = re.compile(r"^(sha256:[0-9a-f]{64})\s")
_GC_LABEL = re.compile(r"(containerd\.io/gc\.[\w./-]+)=([^,\s]+)")

STEP = "images"
Verb = Literal["retag-image", "load-image"]  # the shared vocabulary's image verbs (plan.VERBS)
Outcome = Literal["up-to-date", "retag-image", "load-image"]  # what happened to an image
# Starts the process that writes the archive of the given references to the given fd.
ArchiveSource: TypeAlias = "Callable[[Sequence[str], int], Awaitable[asyncio.subprocess.Process]]"


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

    @property
    def chain_id(self) -> str:
        """The chain ID of the top layer: the snapshot containerd unpacks the image into."""
        return chain_ids(self.diff_ids)[-1] if self.diff_ids else ""


@dataclass(frozen=True)
class NodeState:
    """What one node's containerd holds in kind's namespace (read once per check)."""

    node: str
    images: dict[str, str]  # image name -> target digest
    blobs: dict[str, dict[str, str]]  # blob digest -> its containerd.io/gc.* labels

    def _configs(self, digest: str, depth: int = 0) -> list[str]:
        labels = self.blobs.get(digest)
        if labels is None or depth > 2:
            return []
        if config := labels.get(_CONFIG_LABEL):
            return [config]
        children = [v for k, v in labels.items() if k.startswith(_MANIFEST_LABEL)]
        return [c for child in children for c in self._configs(child, depth + 1)]

    def complete(self, target: str, image: LocalImage) -> bool:
        """Says whether `target` is `image`, fully imported and unpacked."""
        configs = self._configs(target)
        if image.id in configs:
            configs = [image.id]
        elif target != image.id:
            return False
        if not image.diff_ids:
            return bool(configs)
        # The unpacker labels the config last, once the image's top snapshot is committed. In a
        # snapshotter other than the CRI's, kubelet's containerd unpacks again from the content.
        return any(
            key.startswith(SNAPSHOT_LABEL) and value == image.chain_id
            for config in configs
            for key, value in self.blobs.get(config, {}).items()
        )

    def holds(self, image: LocalImage) -> bool:
        target = self.images.get(image.name)
        return target is not None and self.complete(target, image)

    def retag_source(self, image: LocalImage) -> str | None:
        """Returns another name under which the node holds `image` complete, if any."""
        names = sorted(self.images, key=lambda n: (n.startswith("sha256:"), n))
        for name in names:
            if name != image.name and self.complete(self.images[name], image):
                return name
        return None

    def kept(self) -> set[str]:
        """Blobs containerd's garbage collector keeps: reachable from an image or a GC root.

        A blob held only by the lease of an import that is dying (a killed load) is listed too,
        but may vanish any moment; such blobs count as missing and are sent again.
        """
        kept: set[str] = set()
        todo = [*self.images.values(), *(d for d, ls in self.blobs.items() if GC_ROOT in ls)]
        while todo:
            digest = todo.pop()
            if digest in kept or digest not in self.blobs:
                continue
            kept.add(digest)
            todo += [v for k, v in self.blobs[digest].items() if k.startswith(_CONTENT_REF)]
        return kept

    def marked(self) -> list[str]:
        """Blobs a load of this loader marked as GC roots (an interrupted one left them)."""
        return sorted(d for d, labels in self.blobs.items() if labels.get(GC_ROOT) == HOLD_MARK)


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


def _tail(output: bytes | str) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


async def _ctr(node: str, *args: str, check: bool = True) -> proc.Completed:
    return await docker.run("exec", node, "ctr", "-n", NAMESPACE, *args, check=check)


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
        )
        for ref, item in zip(refs, found, strict=True)
    ]


def _snapshotter(config_dump: str) -> str:
    """The CRI snapshotter from `containerd config dump` (config versions 2 and 3)."""
    try:
        plugins = tomllib.loads(config_dump).get("plugins", {})
    except tomllib.TOMLDecodeError:
        return DEFAULT_SNAPSHOTTER
    v3 = plugins.get("io.containerd.cri.v1.images", {}).get("snapshotter")
    v2 = plugins.get("io.containerd.grpc.v1.cri", {}).get("containerd", {}).get("snapshotter")
    return str(v3 or v2 or DEFAULT_SNAPSHOTTER)


async def get_node_state(node: str) -> NodeState:
    """Reads the node's images and content; raises UserError when its containerd does not answer."""
    images, content = await asyncio.gather(
        _ctr(node, "images", "ls", check=False), _ctr(node, "content", "ls", check=False)
    )
    for done in (images, content):
        if done.returncode != 0:
            reason = _tail(done.stderr or done.stdout)
            raise UserError(f"containerd in node {node} does not answer: {reason}")
    names = {m[1]: m[2] for line in images.text.splitlines() if (m := _IMAGE_ROW.match(line))}
    blobs = {
        m[1]: dict(_GC_LABEL.findall(line))
        for line in content.text.splitlines()
        if (m := _CONTENT_ROW.match(line))
    }
    return NodeState(node, names, blobs)


async def get_snapshotter(node: str) -> str:
    """The snapshotter kubelet's containerd unpacks images with (kind reads it the same way)."""
    done = await docker.run("exec", node, "containerd", "config", "dump", check=False)
    return _snapshotter(done.text) if done.returncode == 0 else DEFAULT_SNAPSHOTTER


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
            await _ctr(action.node, "images", "tag", "--force", action.source, action.image.name)
            finished[action.image.ref] = time.monotonic()
    loads = [a for a in actions if a.verb == "load-image"]
    sent = await _load(loads, states, reporter, archive) if loads else {}
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
            _ctr(state.node, "content", "label", digest, f"{GC_ROOT}=", check=False)
            for state in after.values()
            for digest in state.marked()
        )
    )


async def docker_save(refs: Sequence[str], stdout: int) -> asyncio.subprocess.Process:
    """Starts `docker save` of `refs` for the nodes' platform, writing the archive to `stdout`."""
    return await docker.spawn("save", *await _platform_args(), *refs, stdout=stdout)


async def _platform_args() -> list[str]:
    """`--platform <node platform>` for a `docker save` that takes it (API >= 1.48).

    With containerd's image store a multi-platform image would otherwise be saved as a whole
    index with the blobs of the host platform only. The nodes run on this daemon's platform.
    """
    done = await docker.run("version", "--format", "{{json .}}", check=False)
    try:
        info = json.loads(done.stdout)
        client, server = info["Client"], info["Server"]

        def api(part: dict[str, Any]) -> tuple[int, ...]:
            return tuple(int(x) for x in str(part["ApiVersion"]).split("."))

        if min(api(client), api(server)) >= _SAVE_PLATFORM_API:
            return ["--platform", f"{server['Os']}/{server['Arch']}"]
    except (ValueError, KeyError, TypeError):
        pass
    return []


class _Holds:
    """Marks the blobs sent to one node as GC roots while its import runs.

    `ctr import` keeps what it has written under a lease that dies with it, so a killed load
    would lose every layer it already moved. A mark can only be set once the importer has
    committed the blob, which lags the pipe a little: the worker retries until it sticks, and
    stops when the import ends (its images then hold the blobs).
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task = asyncio.create_task(self._work())

    def add(self, digest: str, size: int) -> None:
        if size >= HOLD_MIN_BYTES:
            self._queue.put_nowait(digest)

    async def _work(self) -> None:
        while True:
            digest = await self._queue.get()
            mark = ["content", "label", digest, f"{GC_ROOT}={HOLD_MARK}"]
            await asyncio.sleep(_HOLD_LAG)
            while (await _ctr(self.node, *mark, check=False)).returncode != 0:
                await asyncio.sleep(_HOLD_LAG)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _collect(stream: asyncio.StreamReader | None) -> bytes:
    """Reads a child's output to the end, keeping only its tail."""
    tail = b""
    while stream is not None and (chunk := await stream.read(_OUTPUT_TAIL)):
        tail = (tail + chunk)[-_OUTPUT_TAIL:]
    return tail


@dataclass
class _Importer:
    """One node's `ctr images import`, fed through a pipe this process writes."""

    node: str
    process: asyncio.subprocess.Process
    writer: TarWriter
    output: asyncio.Task[bytes]
    holds: _Holds

    @classmethod
    async def start(cls, node: str) -> _Importer:
        snapshotter = await get_snapshotter(node)
        read_fd, write_fd = open_pipe()
        try:
            process = await docker.spawn(
                "exec", "-i", node, "ctr", "-n", NAMESPACE, "images", "import",
                "--snapshotter", snapshotter, "-",
                stdin=read_fd,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        output = asyncio.create_task(_collect(process.stdout))
        return cls(node, process, TarWriter(PipeWriter(write_fd)), output, _Holds(node))

    async def failure(self) -> ImageLoadError:
        return ImageLoadError(
            f"ctr import into node {self.node} failed: {_tail(await self.output)}",
            hint="re-run to continue; layers that reached the node are kept",
        )


async def _load(
    loads: Sequence[NodeAction],
    states: Mapping[str, NodeState],
    reporter: Reporter,
    archive: ArchiveSource,
) -> dict[str, int]:
    """Streams one archive of every image some node lacks into those nodes' importers.

    Returns the bytes sent per image reference.
    """
    images = list({a.image.ref: a.image for a in loads}.values())
    wanted: dict[str, list[LocalImage]] = {}
    for action in loads:
        wanted.setdefault(action.node, []).append(action.image)
    read_fd, write_fd = open_pipe()
    try:
        save = await archive([i.ref for i in images], write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    source = TarReader(read_fd)
    save_errors = asyncio.create_task(_collect(save.stderr))
    importers: list[_Importer] = []
    try:
        started = await asyncio.gather(
            *map(_Importer.start, sorted(wanted)), return_exceptions=True
        )
        importers += [i for i in started if isinstance(i, _Importer)]
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        targets = [
            Target(i.node, i.writer, states[i.node].kept(), _archive_images(wanted[i.node]))
            for i in importers
        ]
        with ExitStack() as stack:
            bars = {i.ref: stack.enter_context(reporter.progress(i.ref, i.size)) for i in images}
            owners, everyone = _owners(images, bars), list(bars.values())

            def on_bytes(digest: str | None, n: int) -> None:
                for bar in owners.get(digest or "", everyone):
                    bar.advance(n)

            holds = {i.node: i.holds for i in importers}
            relay = Relay(
                _archive_images(images),
                targets,
                on_bytes=on_bytes,
                on_blob=lambda target, digest, size: holds[target.node].add(digest, size),
            )
            try:
                await relay.read(source)
            except BrokenPipeError as exc:
                stopped = [i for i in importers if i.process.returncode is not None]
                raise await (stopped or importers)[0].failure() from exc
            except TruncatedArchive:
                if await save.wait() == 0:
                    raise
            if await save.wait() != 0:
                raise ImageLoadError(f"docker save failed: {_tail(await save_errors)}")
            await relay.finish()
        for importer in importers:
            if await importer.process.wait() != 0:
                raise await importer.failure()
        return _attribute(images, targets)
    except BaseException:
        await asyncio.gather(
            proc.stop(save, grace=2), *(proc.stop(i.process, grace=2) for i in importers)
        )
        raise
    finally:
        source.close()
        for importer in importers:
            importer.writer.pipe.close()
            await importer.holds.stop()


def _archive_images(chosen: Sequence[LocalImage]) -> list[ArchiveImage]:
    """Groups references by image ID: one archive image with every name it goes by."""
    by_id: dict[str, list[LocalImage]] = {}
    for image in chosen:
        by_id.setdefault(image.id, []).append(image)
    return [
        ArchiveImage(tuple(i.name for i in group), group[0].id, group[0].diff_ids)
        for group in by_id.values()
    ]


def _owners(
    images: Sequence[LocalImage], bars: Mapping[str, Progress]
) -> dict[str, list[Progress]]:
    """Maps each blob digest to the progress bars of the images made of it."""
    owners: dict[str, list[Progress]] = {}
    for image in images:
        for digest in {image.id, *image.diff_ids}:
            owners.setdefault(digest, []).append(bars[image.ref])
    return owners


def _attribute(images: Sequence[LocalImage], targets: Sequence[Target]) -> dict[str, int]:
    """Splits the bytes written into each node among images: each blob counts for the first
    image (in request order) made of it; headers, manifests and unmapped blobs count for the
    node's first image, so the parts add up to every byte sent."""
    sent: dict[str, int] = {}
    for target in targets:
        first = next(i.ref for i in images if any(i.id == a.id for a in target.images))
        counted = 0
        for digest, size in target.sent.items():
            owner = next((i.ref for i in images if digest == i.id or digest in i.diff_ids), first)
            sent[owner] = sent.get(owner, 0) + size
            counted += size
        sent[first] = sent.get(first, 0) + target.writer.written - counted
    return sent
