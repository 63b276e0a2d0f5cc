"""Stream mode: `docker save` of every image some node lacks streams (no temp file) into each
such node's `ctr images import`, as an OCI layout that leaves out the layer blobs the node
already has (see `archive`).

Images that share no layer are saved apart, one `docker save` after another, each started once
the one before has begun to write: a Docker before 25 exports every layer it was asked for to
disk before its first byte, so the next export then overlaps this stream's import.

Layer blobs sent during a load are marked as GC roots while it runs, so a killed load keeps
what reached the node and the next run sends only the rest; the marks go once every image is
in place (images.apply_images).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from laconic_helm import docker, handoff, proc
from laconic_helm.archive import (
    ArchiveImage,
    PipeWriter,
    Relay,
    Target,
    TarReader,
    TarWriter,
    TruncatedArchive,
    open_pipe,
)
from laconic_helm.containerd import GC_ROOT, HOLD_MARK, NAMESPACE, ctr, get_snapshotter, tail
from laconic_helm.errors import ImageLoadError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from laconic_helm.containerd import NodeState
    from laconic_helm.images import LocalImage, NodeAction
    from laconic_helm.output import Progress, Reporter

HOLD_MIN_BYTES = 32 << 20  # smaller blobs cost less to resend than to mark and unmark
_HOLD_LAG = 0.3  # seconds between a blob's last byte and a try to mark it (each try is an exec)
_SAVE_PLATFORM_API = (1, 48)  # first Docker API whose `docker save` takes --platform
_OUTPUT_TAIL = 64 << 10

# Starts the process that writes the archive of the given references to the given fd.
ArchiveSource: TypeAlias = "Callable[[Sequence[str], int], Awaitable[asyncio.subprocess.Process]]"


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
            while (await ctr(self.node, *mark, check=False)).returncode != 0:
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
class _Save:
    """One `docker save` of a group of images, read through a pipe."""

    process: asyncio.subprocess.Process
    reader: TarReader
    errors: asyncio.Task[bytes]

    @classmethod
    async def start(cls, archive: ArchiveSource, refs: Sequence[str]) -> _Save:
        read_fd, write_fd = open_pipe()
        try:
            process = await archive(refs, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return cls(process, TarReader(read_fd), asyncio.create_task(_collect(process.stderr)))

    async def relay(self, relay: Relay, importers: Sequence[_Importer]) -> None:
        """Relays this archive to the importers; raises for a failed save or importer."""
        try:
            await relay.read(self.reader)
        except BrokenPipeError as exc:
            stopped = [i for i in importers if i.process.returncode is not None]
            raise await (stopped or importers)[0].failure() from exc
        except TruncatedArchive:
            if await self.process.wait() == 0:
                raise
        if await self.process.wait() != 0:
            raise ImageLoadError(f"docker save failed: {tail(await self.errors)}")


def save_groups(images: Sequence[LocalImage]) -> list[list[LocalImage]]:
    """Splits the images into groups that share no layer, in request order: each group is one
    `docker save` (saved apart, a shared layer would be exported twice)."""
    groups: list[tuple[set[str], list[LocalImage]]] = []
    for image in images:
        layers = {image.id, *image.diff_ids}
        joined = [g for g in groups if g[0] & layers]
        groups = [g for g in groups if not g[0] & layers]
        members = [i for _, group in joined for i in group] + [image]
        groups.append((layers.union(*(keys for keys, _ in joined)), members))
    ordered = [sorted(members, key=images.index) for _, members in groups]
    return sorted(ordered, key=lambda members: images.index(members[0]))


@dataclass
class _Importer:
    """One node's `ctr images import`, fed through a FIFO in the node's transfer folder, or
    else through a pipe into `docker exec -i` (see `handoff`)."""

    node: str
    process: asyncio.subprocess.Process
    writer: TarWriter
    output: asyncio.Task[bytes]
    holds: _Holds

    @classmethod
    async def start(cls, node: str) -> _Importer:
        snapshotter, folder = await asyncio.gather(
            get_snapshotter(node), handoff.mounted_folder(node)
        )
        command = ["ctr", "-n", NAMESPACE, "images", "import", "--snapshotter", snapshotter]
        if folder is not None:

            async def read(path: str) -> asyncio.subprocess.Process:
                return await docker.spawn(
                    "exec", node, *command, path, stderr=asyncio.subprocess.STDOUT
                )

            opened = await handoff.open_fifo(folder, node, read)
            if opened is not None:
                return cls._made(node, *opened)
        read_fd, write_fd = open_pipe()
        try:
            process = await docker.spawn(
                "exec", "-i", node, *command, "-", stdin=read_fd, stderr=asyncio.subprocess.STDOUT
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls._made(node, process, write_fd)

    @classmethod
    def _made(cls, node: str, process: asyncio.subprocess.Process, write_fd: int) -> _Importer:
        output = asyncio.create_task(_collect(process.stdout))
        return cls(node, process, TarWriter(PipeWriter(write_fd)), output, _Holds(node))

    async def failure(self) -> ImageLoadError:
        return ImageLoadError(
            f"ctr import into node {self.node} failed: {tail(await self.output)}",
            hint="re-run to continue; layers that reached the node are kept",
        )


async def load(
    loads: Sequence[NodeAction],
    states: Mapping[str, NodeState],
    reporter: Reporter,
    archive: ArchiveSource,
) -> dict[str, int]:
    """Streams the archives of every image some node lacks into those nodes' importers.

    Returns the bytes sent per image reference.
    """
    images = list({a.image.ref: a.image for a in loads}.values())
    wanted: dict[str, list[LocalImage]] = {}
    for action in loads:
        wanted.setdefault(action.node, []).append(action.image)
    groups = save_groups(images)
    saves = [await _Save.start(archive, [i.ref for i in groups[0]])]  # before the importers
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
            for index in range(len(groups)):
                if index + 1 < len(groups):  # once this export is done, the next one starts
                    await saves[index].reader.started()
                    saves.append(await _Save.start(archive, [i.ref for i in groups[index + 1]]))
                await saves[index].relay(relay, importers)
            await relay.finish()
        for importer in importers:
            if await importer.process.wait() != 0:
                raise await importer.failure()
        return _attribute(images, targets)
    except BaseException:
        await asyncio.gather(
            *(proc.stop(s.process, grace=2) for s in saves),
            *(proc.stop(i.process, grace=2) for i in importers),
        )
        raise
    finally:
        for save in saves:
            save.reader.close()
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
