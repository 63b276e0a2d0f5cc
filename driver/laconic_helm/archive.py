"""Turns one `docker save` stream into one OCI-layout stream per node, each carrying only the
blobs that node lacks.

`docker save` writes either the legacy archive (Docker < 25: a directory per layer named by a v1
ID, holding `json` and `layer.tar`; `<image id>.json` configs; `manifest.json` last) or an OCI
layout (Docker >= 25: `blobs/sha256/<digest>`, `index.json`). containerd's importer reads an OCI
layout in any entry order, stores each blob under the digest it computes and resolves
`index.json` at the end, so a node can be sent a layout whose manifests name blobs it already
holds without carrying them. Layer bytes move pipe to pipe inside the kernel (splice) or, when
they go to several nodes, through one bounded buffer: no temp file, and memory does not grow
with the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from laconic_helm.errors import ImageLoadError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

BLOCK = 512
CHUNK = 1 << 20  # bytes moved per step; bounds the relay's memory
PIPE_SIZE = 1 << 20  # the default ceiling of /proc/sys/fs/pipe-max-size
SMALL_LIMIT = 16 << 20  # largest metadata file (json, manifest.json, index.json) held in memory
_ZERO_BLOCK = bytes(BLOCK)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
NAME_ANNOTATION = "io.containerd.image.name"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'

_BLOB_PATH = re.compile(r"^blobs/(sha256)/([0-9a-f]{64})$")
_LEGACY_PATH = re.compile(r"^([0-9a-f]{64})/(json|layer\.tar|VERSION)$")
_LEGACY_CONFIG = re.compile(r"^([0-9a-f]{64})\.json$")


class TruncatedArchive(ImageLoadError):
    """The archive stream ended or broke before its end marker."""


@dataclass(frozen=True)
class TarEntry:
    name: str
    size: int
    type: bytes
    linkname: str = ""

    @property
    def is_file(self) -> bool:
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE)


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        length_text, _, _ = data[pos : pos + 20].partition(b" ")
        length = int(length_text)
        key, _, value = data[pos + len(length_text) + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def open_pipe() -> tuple[int, int]:
    """Returns (read fd, write fd) of a new pipe, enlarged so bytes move in big steps."""
    read_fd, write_fd = os.pipe()  # not inherited: only the child given one end holds it
    enlarge_pipe(write_fd)
    return read_fd, write_fd


def enlarge_pipe(fd: int) -> None:
    """Gives pipe (or FIFO) `fd` a buffer of PIPE_SIZE where the system allows it."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


async def _ready(fd: int, *, write: bool) -> None:
    """Waits until `fd` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    if write:
        add, remove = loop.add_writer, loop.remove_writer
    else:
        add, remove = loop.add_reader, loop.remove_reader
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)


class PipeWriter:
    """The write end of a pipe into a child; counts every byte it sends."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.written = 0

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                done = os.write(self.fd, view)
            except BlockingIOError:
                await _ready(self.fd, write=True)
                continue
            view = view[done:]
            self.written += done

    def close(self) -> None:
        """Closes the pipe: the child reads end-of-file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TarReader:
    """Reads a tar stream from a pipe entry by entry, never holding more than CHUNK bytes.

    Entry data is not buffered here, so it can be spliced on to other pipes by the kernel
    (`copy_to`): a layer bound for one node, or skipped, costs this process almost nothing.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._left = 0
        self._pad = 0
        self._null = -1

    async def _read(self, n: int) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await _ready(self.fd, write=False)

    async def started(self) -> None:
        """Waits until the stream has data or has ended (a `docker save` has finished exporting
        before its first byte)."""
        await _ready(self.fd, write=False)

    async def _exactly(self, n: int) -> bytes:
        parts = []
        while n:
            data = await self._read(n)
            if not data:
                raise TruncatedArchive("the image archive ended before its end marker")
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    async def next(self) -> TarEntry | None:
        """Returns the next entry (skipping what is left of the current one), None at the end."""
        await self.skip()
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            block = await self._exactly(BLOCK)
            if block == _ZERO_BLOCK:
                while await self._read(CHUNK):  # let the writer finish its padding
                    pass
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ImageLoadError(f"the image archive is corrupt: {exc}") from exc
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                             tarfile.GNUTYPE_LONGLINK):  # fmt: skip
                self._left, self._pad = info.size, -info.size % BLOCK
                data = await self.read_small()
                if data is None:
                    raise ImageLoadError("the image archive has an oversized extended header")
                if info.type == tarfile.XHDTYPE:
                    pax.update(_pax_records(data))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            size = int(pax["size"]) if "size" in pax else info.size
            self._left, self._pad = size, -size % BLOCK
            name = (pax.get("path") or long_name or info.name).removeprefix("./")
            link = pax.get("linkpath") or long_link or info.linkname
            return TarEntry(name, size, info.type, link)

    async def read_small(self, limit: int = SMALL_LIMIT) -> bytes | None:
        """Returns the current entry's data, or None (data skipped) when it exceeds `limit`."""
        if self._left > limit:
            await self.skip()
            return None
        data = await self._exactly(self._left)
        self._left = 0
        await self._end()
        return data

    async def skip(self) -> None:
        await self.copy_to([], lambda n: None)

    async def copy_to(
        self,
        writers: Sequence[PipeWriter],
        on_bytes: Callable[[int], None],
        hasher: hashlib._Hash | None = None,
    ) -> None:
        """Moves the current entry's data into every writer (none: drops it)."""
        if hasher is None and len(writers) <= 1:
            await self._splice(writers[0] if writers else None, on_bytes)
        while self._left:
            data = await self._read(min(self._left, CHUNK))
            if not data:
                raise TruncatedArchive("the image archive ended inside an entry")
            self._left -= len(data)
            if hasher is not None:
                hasher.update(data)
            for writer in writers:
                await writer.write(data)
            on_bytes(len(data))
        await self._end()

    async def _splice(self, writer: PipeWriter | None, on_bytes: Callable[[int], None]) -> None:
        """Lets the kernel move the data pipe to pipe (or to /dev/null); leaves what it cannot."""
        if writer is None and self._null < 0:
            self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        out = writer.fd if writer is not None else self._null
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while self._left:
            try:
                moved = os.splice(self.fd, out, min(self._left, CHUNK), flags=flags)
            except BlockingIOError:
                readable, writable, _ = select.select([self.fd], [out], [], 0)
                if not readable:
                    await _ready(self.fd, write=False)
                elif not writable:
                    await _ready(out, write=True)
                else:
                    await asyncio.sleep(0.001)
                continue
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not a pipe (a file in tests): copy instead
                    return
                raise
            if not moved:
                raise TruncatedArchive("the image archive ended inside an entry")
            self._left -= moved
            if writer is not None:
                writer.written += moved
            on_bytes(moved)

    async def _end(self) -> None:
        if self._pad:
            pad, self._pad = self._pad, 0
            await self._exactly(pad)

    def close(self) -> None:
        for fd in (self.fd, self._null):
            if fd >= 0:
                os.close(fd)
        self.fd = self._null = -1


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class TarWriter:
    """Writes a tar stream into a pipe."""

    def __init__(self, pipe: PipeWriter) -> None:
        self.pipe = pipe

    @property
    def written(self) -> int:
        return self.pipe.written

    async def begin(self, name: str, size: int) -> None:
        await self.pipe.write(_header(name, size))

    async def end(self, size: int) -> None:
        if size % BLOCK:
            await self.pipe.write(bytes(BLOCK - size % BLOCK))

    async def add(self, name: str, data: bytes) -> None:
        await self.begin(name, len(data))
        await self.pipe.write(data)
        await self.end(len(data))

    async def close(self) -> None:
        """Writes the end marker and closes the pipe, which tells the importer to finish."""
        await self.pipe.write(bytes(2 * BLOCK))
        self.pipe.close()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Returns the chain ID of each layer prefix: what containerd names the unpacked snapshots."""
    chains: list[str] = []
    for diff in diff_ids:
        chains.append(diff if not chains else digest_of(f"{chains[-1]} {diff}".encode()))
    return chains


def _raw_members(text: str) -> dict[str, str]:
    """Splits a JSON object into its members, keeping each value's exact source text."""
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("not a JSON object")
    pos = _skip_space(text, pos + 1)
    while text[pos : pos + 1] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] != ":":
            raise ValueError("expected ':'")
        start = _skip_space(text, pos + 1)
        _, pos = decoder.raw_decode(text, start)
        members[key] = text[start:pos]
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] == ",":
            pos = _skip_space(text, pos + 1)
    return members


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class LegacyLayers:
    """Maps the v1-ID-named layer directories of a legacy archive to layer diffIDs.

    moby names each directory by the sha256 of a JSON document made of the layer's v1 image fields
    (for lower layers a fixed 1970 `created`, so their IDs repeat across saves and images; for the
    top layer the image's own config), its chain ID and its parent directory's ID. The directory's
    `json` file carries the same fields, so rebuilding that document for each candidate chain ID
    finds the one that reproduces the directory name: a proof, not a guess. A directory that
    matches no candidate stays unknown and its layer is sent whole.
    """

    def __init__(self, images: Iterable[Sequence[str]]) -> None:
        self._diff_of_chain: dict[str, str] = {}
        for diffs in images:
            self._diff_of_chain.update(zip(chain_ids(diffs), diffs, strict=True))
        self.diff_of_dir: dict[str, str] = {}

    def learn(self, v1_id: str, document: bytes) -> str | None:
        """Resolves directory `v1_id` from its `json` file; returns the layer's diffID or None."""
        try:
            members = _raw_members(document.decode())
            parent = json.loads(members["parent"]) if "parent" in members else None
        except (ValueError, KeyError, UnicodeDecodeError):
            return None
        fields = {k: v for k, v in members.items() if k not in ("id", "parent")}
        if parent:
            fields["parent"] = json.dumps(f"sha256:{parent}")
        # A lower layer's ID was computed before `os` was set on it; the top layer's included it.
        variants = [fields, {k: v for k, v in fields.items() if k != "os"}]
        for chain, diff in self._diff_of_chain.items():
            for variant in variants:
                doc = {**variant, "layer_id": json.dumps(chain)}
                text = "{" + ",".join(f"{json.dumps(k)}:{doc[k]}" for k in sorted(doc)) + "}"
                if hashlib.sha256(text.encode()).hexdigest() == v1_id:
                    self.diff_of_dir[v1_id] = diff
                    return diff
        return None


@dataclass(frozen=True)
class ArchiveImage:
    """An image the archive carries: its containerd name(s), docker ID and layer diffIDs."""

    names: tuple[str, ...]
    id: str
    diff_ids: tuple[str, ...]


@dataclass
class Target:
    """One node's side of a transfer: what it holds, which images it needs, and its stream."""

    node: str
    writer: TarWriter
    holds: set[str]  # blob digests the node keeps (see containerd.NodeState.kept)
    images: list[ArchiveImage]
    sent: dict[str, int] = field(default_factory=dict)  # digest -> size of blobs sent

    def wanted_diffs(self) -> set[str]:
        return {d for image in self.images for d in image.diff_ids}


class Relay:
    """Copies `docker save` streams to every target, leaving out what each already holds.

    Calls `on_bytes(digest, n)` for every chunk read from the archive (digest None when not yet
    known) and `on_blob(target, digest, size)` once a blob has been written to a target in full.
    Nothing that names an image (manifests, `index.json`) is written before the whole archive has
    been read and checked, so a stream cut short never creates an image in a node.
    """

    def __init__(
        self,
        images: Sequence[ArchiveImage],
        targets: Sequence[Target],
        *,
        on_bytes: Callable[[str | None, int], None],
        on_blob: Callable[[Target, str, int], None],
    ) -> None:
        self.images = list(images)
        self.targets = list(targets)
        self._on_bytes = on_bytes
        self._on_blob = on_blob
        self._legacy = LegacyLayers(image.diff_ids for image in self.images)
        self._sizes: dict[str, int] = {}  # archive path -> size
        self._links: dict[str, str] = {}  # archive path -> path it points to
        self._hashed: dict[str, str] = {}  # legacy dir sent before its diffID was known -> digest
        self._manifest: list[dict[str, object]] | None = None  # every archive's, in order
        self._index: list[object] = []  # the manifests of every archive's index.json
        self._oci = False

    async def read(self, reader: TarReader) -> None:
        """Relays every entry of one archive: blobs only, nothing that names an image yet.

        Called once per archive when the images come in several (their paths are content
        addressed, so the archives' entries never clash)."""
        while (entry := await reader.next()) is not None:
            await self._entry(reader, entry)

    async def finish(self) -> None:
        """Writes each target's manifests, index and layout marker, then closes its stream."""
        closing = self._closing()
        for target in self.targets:
            for name, data in closing[target.node]:
                await target.writer.add(name, data)
            await target.writer.close()

    async def _entry(self, reader: TarReader, entry: TarEntry) -> None:
        name = entry.name
        if entry.type == tarfile.SYMTYPE:
            self._links[name] = _join(name, entry.linkname)
            return
        if not entry.is_file:
            return
        self._sizes[name] = entry.size
        if blob := _BLOB_PATH.match(name):
            digest = f"{blob[1]}:{blob[2]}"
            # An OCI layout's blobs are not mapped to images before its manifests are read (they
            # may come later), so every target that lacks a blob gets it.
            await self._blob(reader, entry, digest, name, self.targets)
        elif legacy := _LEGACY_PATH.match(name):
            await self._legacy_entry(reader, entry, legacy[1], legacy[2])
        elif config := _LEGACY_CONFIG.match(name):
            digest = f"sha256:{config[1]}"
            users = [t for t in self.targets if any(i.id == digest for i in t.images)]
            await self._blob(reader, entry, digest, f"blobs/sha256/{config[1]}", users)
        elif name in ("manifest.json", "index.json", "oci-layout"):
            data = await reader.read_small()
            if data is None:
                raise ImageLoadError(f"the image archive's {name} is larger than expected")
            if name == "oci-layout":
                self._oci = True
                return
            try:
                document = json.loads(data)
            except ValueError as exc:
                raise ImageLoadError(f"the image archive's {name} is not JSON: {exc}") from exc
            if name == "manifest.json" and isinstance(document, list):
                self._manifest = [*(self._manifest or []), *document]
            elif name == "index.json" and isinstance(document, dict):
                self._index += document.get("manifests") or []

    async def _legacy_entry(
        self, reader: TarReader, entry: TarEntry, v1_id: str, part: str
    ) -> None:
        if part == "json":
            data = await reader.read_small()
            if data is not None:
                self._legacy.learn(v1_id, data)
            return
        if part != "layer.tar":
            return
        diff = self._legacy.diff_of_dir.get(v1_id)
        if diff is None:
            # Unknown mapping: send it under its path and learn the digest on the way.
            self._hashed[v1_id] = await self._send(reader, entry, None, entry.name, self.targets)
            return
        users = [t for t in self.targets if diff in t.wanted_diffs()]
        await self._blob(reader, entry, diff, f"blobs/sha256/{diff[7:]}", users)

    async def _blob(
        self, reader: TarReader, entry: TarEntry, digest: str, path: str, users: list[Target]
    ) -> None:
        receivers = [t for t in users if digest not in t.holds and digest not in t.sent]
        await self._send(reader, entry, digest, path, receivers)

    async def _send(
        self,
        reader: TarReader,
        entry: TarEntry,
        digest: str | None,
        path: str,
        receivers: list[Target],
    ) -> str:
        hasher = hashlib.sha256() if digest is None else None
        for target in receivers:
            await target.writer.begin(path, entry.size)
        pipes = [t.writer.pipe for t in receivers]
        await reader.copy_to(pipes, lambda n: self._on_bytes(digest, n), hasher)
        final = digest or f"sha256:{hasher.hexdigest()}"  # type: ignore[union-attr]
        for target in receivers:
            await target.writer.end(entry.size)
            target.sent[final] = entry.size
            self._on_blob(target, final, entry.size)
        return final

    def _closing(self) -> dict[str, list[tuple[str, bytes]]]:
        """Builds, per target, the entries that make its images: manifests, index, layout."""
        if self._oci:
            descriptors = self._oci_descriptors()
            manifests: dict[str, tuple[str, bytes]] = {}
        elif self._manifest is not None:
            descriptors, manifests = self._legacy_manifests()
        else:
            raise ImageLoadError("the image archive has neither index.json nor manifest.json")
        closing: dict[str, list[tuple[str, bytes]]] = {}
        for target in self.targets:
            entries: list[tuple[str, bytes]] = []
            index: list[dict[str, object]] = []
            for image in target.images:
                if image.id in manifests:
                    path, data = manifests[image.id]
                    entries.append((path, data))
                for name in image.names:
                    index.append({**descriptors[image.id], "annotations": {NAME_ANNOTATION: name}})
            document = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index}
            entries.append(("index.json", json.dumps(document).encode()))
            entries.append(("oci-layout", OCI_LAYOUT))
            closing[target.node] = entries
        return closing

    def _resolve(self, path: str) -> str:
        seen = 0
        while path in self._links and seen < 8:
            path, seen = self._links[path], seen + 1
        return path

    def _legacy_manifests(
        self,
    ) -> tuple[dict[str, dict[str, object]], dict[str, tuple[str, bytes]]]:
        """Checks the archive's manifest.json against the diffIDs used, and writes OCI manifests."""
        by_id: dict[str, dict[str, object]] = {}
        for item in self._manifest or []:
            config = str(item.get("Config", ""))
            if _LEGACY_CONFIG.match(config):
                by_id[f"sha256:{config[:-5]}"] = item
        descriptors: dict[str, dict[str, object]] = {}
        manifests: dict[str, tuple[str, bytes]] = {}
        for image in self.images:
            item = by_id.get(image.id)
            layers = list(item.get("Layers") or []) if item else []  # type: ignore[call-overload]
            if item is None or len(layers) != len(image.diff_ids):
                raise ImageLoadError(
                    f"image {image.names[0]} is missing from the docker save output"
                )
            descs = []
            for path, diff in zip(layers, image.diff_ids, strict=True):
                real = self._resolve(str(path))
                v1_id = real.split("/", 1)[0]
                found = self._legacy.diff_of_dir.get(v1_id) or self._hashed.get(v1_id)
                if found is not None and found != diff:
                    raise ImageLoadError(
                        f"image {image.names[0]}: layer {v1_id[:12]} is {found}, expected {diff}"
                    )
                if real not in self._sizes:
                    raise ImageLoadError(f"image {image.names[0]}: layer file {real} is missing")
                descs.append({"mediaType": MEDIA_LAYER, "digest": diff, "size": self._sizes[real]})
            config_path = f"{image.id[7:]}.json"
            if config_path not in self._sizes:
                raise ImageLoadError(f"image {image.names[0]}: config {config_path} is missing")
            document = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {
                    "mediaType": MEDIA_CONFIG,
                    "digest": image.id,
                    "size": self._sizes[config_path],
                },
                "layers": descs,
            }
            data = json.dumps(document).encode()
            digest = digest_of(data)
            manifests[image.id] = (f"blobs/sha256/{digest[7:]}", data)
            descriptors[image.id] = {
                "mediaType": MEDIA_MANIFEST,
                "digest": digest,
                "size": len(data),
            }
        return descriptors, manifests

    def _oci_descriptors(self) -> dict[str, dict[str, object]]:
        """Finds each image's descriptor in the archive's index.json (by name, else by digest)."""
        entries: list[dict[str, object]] = [e for e in self._index if isinstance(e, dict)]
        descriptors: dict[str, dict[str, object]] = {}
        for image in self.images:
            for entry in entries:
                annotations = entry.get("annotations") or {}
                if (
                    entry.get("digest") == image.id
                    or annotations.get(NAME_ANNOTATION) in image.names
                ):
                    keep = ("mediaType", "digest", "size", "platform")
                    descriptors[image.id] = {k: entry[k] for k in keep if k in entry}
                    break
            else:
                raise ImageLoadError(
                    f"image {image.names[0]} is missing from the docker save index"
                )
        return descriptors


def _join(name: str, link: str) -> str:
    """Resolves a relative symlink target inside the archive (`a/layer.tar -> ../b/layer.tar`)."""
    parts = name.split("/")[:-1]
    for part in link.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)
