"""Image loading into kind-like nodes with real containerd: what is present is skipped, what a
node lacks is all that travels, and a load killed half-way is finished by the next one."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from laconic_helm import containerd, images, proc, stream
from laconic_helm.archive import LegacyLayers, PipeWriter, TarReader, TarWriter, chain_ids
from laconic_helm.cli import main
from laconic_helm.errors import ImageLoadError
from laconic_helm.output import Reporter
from tests.harness import nodes
from tests.harness.imagebuild import Builder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

MiB = 1 << 20


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.27", "docker.io/library/nginx:1.27"),
        ("laconicnetwork/agave:local", "docker.io/laconicnetwork/agave:local"),
        ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("index.docker.io/me/app:2", "docker.io/me/app:2"),
        (
            "ghcr.io/laconicnetwork/caddy-ingress:latest",
            "ghcr.io/laconicnetwork/caddy-ingress:latest",
        ),
        ("localhost:5001/app", "localhost:5001/app:latest"),
        ("localhost/app:1", "localhost/app:1"),
        ("registry:5000/team/app:3", "registry:5000/team/app:3"),
        ("app@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
    ],
)
def test_containerd_name(ref: str, name: str) -> None:
    assert images.containerd_name(ref) == name


@pytest.mark.unit
def test_chain_ids_follow_the_oci_rule() -> None:
    d1, d2 = _digest(b"one"), _digest(b"two")
    assert chain_ids([d1, d2]) == [d1, _digest(f"{d1} {d2}".encode())]


def _sample_tar(fmt: int) -> tuple[bytes, dict[str, bytes]]:
    files = {
        "short": b"x" * 10,
        "dir-" + "n" * 120 + "/layer.tar": os.urandom(3 * MiB + 7),
        "empty": b"",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../b/layer.tar"
        tar.addfile(link)
    return buf.getvalue(), files


def _feed(data: bytes) -> int:
    """Returns the read end of a pipe another thread fills with `data`, as a child would."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return read_fd


class _Drain:
    """The read end of a pipe whose contents another thread collects."""

    def __init__(self) -> None:
        read_fd, self.fd = os.pipe()
        self.data = b""
        self._thread = threading.Thread(target=self._collect, args=(read_fd,), daemon=True)
        self._thread.start()

    def _collect(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            self.data = pipe.read()

    def result(self) -> bytes:
        self._thread.join(10)
        return self.data


@pytest.mark.unit
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("receivers", [0, 1, 2])
def test_tar_reader_reads_long_names_links_and_moves_data(fmt: int, receivers: int) -> None:
    """0 receivers: data dropped (spliced to /dev/null); 1: spliced; 2: copied to both."""
    data, files = _sample_tar(fmt)
    drains = [_Drain() for _ in range(receivers)]

    async def read() -> tuple[dict[str, bytes], dict[str, str], int]:
        reader = TarReader(_feed(data))
        pipes = [PipeWriter(d.fd) for d in drains]
        seen: dict[str, bytes] = {}
        links: dict[str, str] = {}
        counted = 0

        def count(n: int) -> None:
            nonlocal counted
            counted += n

        while (entry := await reader.next()) is not None:
            if entry.type == tarfile.SYMTYPE:
                links[entry.name] = entry.linkname
            elif entry.size > MiB:
                await reader.copy_to(pipes, count)
            elif entry.name != "empty":
                seen[entry.name] = await reader.read_small() or b""
            # "empty" is left unread: next() must skip it
        reader.close()
        for pipe in pipes:
            pipe.close()
        return seen, links, counted

    seen, links, counted = asyncio.run(read())
    big = next(name for name in files if name.endswith("layer.tar"))
    assert seen == {"short": files["short"]}
    assert links == {"a/layer.tar": "../b/layer.tar"}
    assert counted == len(files[big])
    assert [d.result() for d in drains] == [files[big]] * receivers


@pytest.mark.unit
def test_tar_reader_rejects_a_cut_archive() -> None:
    data, _ = _sample_tar(tarfile.PAX_FORMAT)

    async def read() -> None:
        reader = TarReader(_feed(data[: 2 * MiB]))
        try:
            while await reader.next() is not None:
                pass
        finally:
            reader.close()

    with pytest.raises(images.ImageLoadError, match="ended"):
        asyncio.run(read())


@pytest.mark.unit
def test_tar_writer_output_is_a_tar_that_counts_every_byte() -> None:
    drain = _Drain()
    long_name = "blobs/sha256/" + "f" * 64 + "/" + "x" * 80

    async def write() -> int:
        writer = TarWriter(PipeWriter(drain.fd))
        await writer.add("index.json", b"{}")
        await writer.begin(long_name, 1000)
        await writer.pipe.write(b"a" * 600)
        await writer.pipe.write(b"b" * 400)
        await writer.end(1000)
        await writer.close()
        return writer.written

    written = asyncio.run(write())
    data = drain.result()
    assert written == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == {"index.json": b"{}", long_name: b"a" * 600 + b"b" * 400}


@pytest.mark.unit
def test_legacy_layers_leave_an_unprovable_directory_unknown() -> None:
    layers = LegacyLayers([[_digest(b"layer")]])
    document = b'{"id":"' + b"0" * 64 + b'","created":"1970-01-01T00:00:00Z","os":"linux"}'
    assert layers.learn("0" * 64, document) is None
    assert layers.learn("0" * 64, b"not json") is None
    assert layers.diff_of_dir == {}


def _image(
    diffs: Sequence[str], *, name: str = "docker.io/library/a:1", id: str = ""
) -> images.LocalImage:
    return images.LocalImage("a:1", name, id or _digest(b"config"), tuple(diffs), 0)


def _state(records: dict[str, str], blobs: dict[str, dict[str, str]]) -> containerd.NodeState:
    return containerd.NodeState("n1", records, blobs)


D1, D2 = _digest(b"d1"), _digest(b"d2")
CONFIG, MANIFEST, INDEX = _digest(b"config"), _digest(b"manifest"), _digest(b"index")
CHAIN = chain_ids([D1, D2])[-1]
SNAP = "containerd.io/gc.ref.snapshot.overlayfs"
MANIFEST_LABELS = {
    "containerd.io/gc.ref.content.config": CONFIG,
    "containerd.io/gc.ref.content.l.0": D1,
    "containerd.io/gc.ref.content.l.1": D2,
}
UNPACKED = {MANIFEST: MANIFEST_LABELS, CONFIG: {SNAP: CHAIN}, D1: {}, D2: {}}
NAME = "docker.io/library/a:1"


NATIVE = "containerd.io/gc.ref.snapshot.native"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("records", "blobs", "holds", "source"),
    [
        pytest.param({NAME: MANIFEST}, UNPACKED, True, None, id="present"),
        pytest.param({NAME: MANIFEST}, {**UNPACKED, CONFIG: {}}, False, None, id="not-unpacked"),
        pytest.param(
            {NAME: MANIFEST}, {**UNPACKED, CONFIG: {SNAP: D1}}, False, None, id="unpacked-partly"
        ),
        pytest.param(
            {NAME: MANIFEST}, {**UNPACKED, CONFIG: {NATIVE: CHAIN}}, True, None,
            id="unpacked-by-another-snapshotter",
        ),
        pytest.param(
            {"docker.io/library/a:old": MANIFEST, "sha256:" + "c" * 64: MANIFEST}, UNPACKED,
            False, "docker.io/library/a:old", id="retag-prefers-a-name",
        ),
        pytest.param(
            {NAME: MANIFEST}, {k: v for k, v in UNPACKED.items() if k != CONFIG}, False, None,
            id="config-gone",
        ),
        pytest.param({NAME: _digest(b"other")}, UNPACKED, False, None, id="name-on-another-image"),
    ],
)  # fmt: skip
def test_node_state_decides_presence(
    records: dict[str, str], blobs: dict[str, dict[str, str]], holds: bool, source: str | None
) -> None:
    state = _state(records, blobs)
    image = _image([D1, D2])
    assert state.holds(image) is holds
    assert state.retag_source(image) == source


@pytest.mark.unit
def test_node_state_knows_images_by_index_digest() -> None:
    """With Docker's containerd image store the image ID is the index digest."""
    blobs = {**UNPACKED, INDEX: {"containerd.io/gc.ref.content.m.0": MANIFEST}}
    state = _state({NAME: INDEX}, blobs)
    assert state.holds(_image([D1, D2], id=INDEX))
    assert not state.holds(_image([D1, D2], id=_digest(b"another index")))


@pytest.mark.unit
def test_kept_blobs_are_reachable_from_images_or_marked() -> None:
    leased_only, marked = _digest(b"leased"), _digest(b"marked")
    blobs = {**UNPACKED, leased_only: {}, marked: {containerd.GC_ROOT: containerd.HOLD_MARK}}
    state = _state({NAME: MANIFEST}, blobs)
    assert state.kept() == {MANIFEST, CONFIG, D1, D2, marked}
    assert state.marked() == [marked]


@pytest.mark.unit
def test_plan_covers_every_image_and_node() -> None:
    image = _image([D1, D2])
    states = {
        "n1": _state({NAME: MANIFEST}, UNPACKED),
        "n2": _state({"docker.io/library/a:old": MANIFEST}, UNPACKED),
        "n3": _state({}, {}),
    }
    plan = images.plan_images([image], states)
    assert [(a.node, a.verb, a.source) for a in plan] == [
        ("n2", "retag-image", "docker.io/library/a:old"),
        ("n3", "load-image", ""),
    ]  # n1 holds it: nothing to do there
    assert [a.action.line() for a in plan] == [
        f"images: retag-image {image.ref} (on n2, from docker.io/library/a:old)",
        f"images: load-image {image.ref} (on n3)",
    ]
    assert images.outcomes([image], states, plan) == {
        image.ref: {"n1": "up-to-date", "n2": "retag-image", "n3": "load-image"}
    }


@pytest.mark.unit
def test_images_sharing_no_layer_go_in_separate_saves_in_request_order() -> None:
    def image(ref: str, *layers: bytes) -> images.LocalImage:
        return images.LocalImage(ref, ref, _digest(ref.encode()), tuple(map(_digest, layers)), 0)

    a, b, c = image("a", b"x", b"y"), image("b", b"z"), image("c", b"w")
    d = image("d", b"y", b"w")  # joins a's group and c's
    again = images.LocalImage("e", "e", a.id, a.diff_ids, 0)  # a's ID under another name
    groups = stream.save_groups([a, b, c, d, again, image("f")])
    assert [[i.ref for i in g] for g in groups] == [["a", "c", "d", "e"], ["b"], ["f"]]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("dump", "snapshotter"),
    [
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\nsnapshotter = "native"\n',
         "native"),
        ('version = 3\n[plugins."io.containerd.cri.v1.images"]\nsnapshotter = "fuse-overlayfs"\n',
         "fuse-overlayfs"),
        ("version = 2\n", "overlayfs"),
        ("not toml [", "overlayfs"),
    ],
)  # fmt: skip
def test_snapshotter_from_config_dump(dump: str, snapshotter: str) -> None:
    assert containerd.parse_config(dump).snapshotter == snapshotter


# --- real docker and containerd -------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[str]:
    name = f"lh-img-{uuid.uuid4().hex[:8]}"
    try:
        nodes.create_cluster(name)
        yield name
    finally:
        nodes.delete_cluster(name)


@pytest.fixture(params=["exec", "transfer-folder"])
def channel_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A cluster whose node takes streams through `docker exec -i`, or through a FIFO in the
    transfer folder it mounts (handoff.py)."""
    name = f"lh-img-{uuid.uuid4().hex[:8]}"
    specs = None
    if request.param == "transfer-folder":
        specs = nodes.transfer_node_specs(name, tmp_path / "transfer")
        (tmp_path / "transfer").mkdir()
    try:
        nodes.create_cluster(name, specs)
        yield name
    finally:
        nodes.delete_cluster(name)


def _load(cluster: str, *refs: str, **kwargs: object) -> dict[str, images.ImageResult]:
    reporter = Reporter("human", stream=io.StringIO())
    results = asyncio.run(images.ensure_images(cluster, refs, reporter, **kwargs))  # type: ignore[arg-type]
    return {r.image: r for r in results}


def _content(node: str) -> dict[str, str]:
    """Digest -> the rest of its `ctr content ls` row (labels included)."""
    out = nodes.docker("exec", node, "ctr", "-n", "k8s.io", "content", "ls")
    return {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}


def _diff_ids(ref: str) -> list[str]:
    return json.loads(nodes.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref))


@pytest.mark.docker
def test_load_then_present_sends_nothing(builder: Builder, cluster: str) -> None:
    ref = builder.build("a:1", {"base": os.urandom(2 * MiB), "top": os.urandom(64 << 10)})
    node = f"{cluster}-control-plane"

    first = _load(cluster, ref)[ref]
    assert (first.status, first.nodes) == ("load-image", {node: "load-image"})
    assert 2 * MiB < first.bytes_sent < 2 * MiB + (200 << 10)
    assert images.containerd_name(ref) in nodes.ctr_images(node)

    again = _load(cluster, ref)[ref]
    assert (again.status, again.bytes_sent, again.nodes) == ("up-to-date", 0, {node: "up-to-date"})


@pytest.mark.docker
def test_loading_reaches_docker_only_through_laconic_helm_docker(
    builder: Builder, cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The `docker` on PATH refuses to run, so any call that bypasses the adapter fails the load.
    real = shutil.which("docker")
    assert real is not None
    ref = builder.build("a:1", {"f": os.urandom(100 << 10)})
    calls = tmp_path / "docker-calls.log"
    recorder = tmp_path / "docker-recorder"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {real} "$@"\n')
    recorder.chmod(0o755)
    refusing = tmp_path / "bin"
    refusing.mkdir()
    (refusing / "docker").write_text("#!/bin/sh\necho not this docker >&2\nexit 97\n")
    (refusing / "docker").chmod(0o755)
    monkeypatch.setenv("LACONIC_HELM_DOCKER", str(recorder))
    monkeypatch.setenv("PATH", f"{refusing}{os.pathsep}{os.environ['PATH']}")

    assert _load(cluster, ref)[ref].status == "load-image"
    assert set(calls.read_text().split()) >= {"ps", "image", "exec", "save"}


@pytest.mark.docker
def test_cli_reports_json_summary(builder: Builder, cluster: str) -> None:
    ref = builder.build("a:1", {"f": os.urandom(100 << 10)})
    args = ["-o", "json", "images", "load", "--cluster", cluster, ref]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    (entry,) = report["images"]
    assert entry["image"] == ref and entry["status"] == "load-image"
    assert entry["bytes_sent"] > 100 << 10 and entry["seconds"] > 0
    assert report["changed"] is True


@pytest.mark.docker
def test_retag_when_the_id_is_there_under_another_name(builder: Builder, cluster: str) -> None:
    ref = builder.build("a:1", {"f": os.urandom(MiB)})
    alias = f"{builder.repo}/alias:7"
    nodes.docker("tag", ref, alias)
    builder.built.append(alias)
    node = f"{cluster}-control-plane"
    _load(cluster, ref)

    result = _load(cluster, alias)[alias]
    assert (result.status, result.bytes_sent, result.nodes) == (
        "retag-image",
        0,
        {node: "retag-image"},
    )
    held = nodes.ctr_images(node)
    assert images.containerd_name(ref) in held and images.containerd_name(alias) in held
    assert _load(cluster, alias)[alias].status == "up-to-date"


@pytest.mark.docker
def test_shared_base_is_sent_once(builder: Builder, cluster: str) -> None:
    base = builder.build("base:1", {"base": os.urandom(4 * MiB)})
    one = builder.build("one:1", {"top": os.urandom(128 << 10)}, base=base)
    two = builder.build("two:1", {"top": os.urandom(128 << 10)}, base=base)

    results = _load(cluster, one, two)
    total = sum(r.bytes_sent for r in results.values())
    assert {r.status for r in results.values()} == {"load-image"}
    assert 4 * MiB + (256 << 10) < total < 4 * MiB + (512 << 10)  # not 2 x 4 MiB
    held = nodes.ctr_images(f"{cluster}-control-plane")
    assert {images.containerd_name(one), images.containerd_name(two)} <= set(held)


def _recording_save(calls: list[list[str]], fail_after: int | None = None) -> stream.ArchiveSource:
    """`docker save` that records each call's references; from call `fail_after` on, a save
    that writes half an archive and fails."""

    async def save(refs: Sequence[str], stdout: int) -> asyncio.subprocess.Process:
        calls.append(list(refs))
        if fail_after is not None and len(calls) > fail_after:
            script = 'docker save "$@" | head -c 70000; echo no such image >&2; exit 3'
            return await proc.spawn(["sh", "-c", script, "save", *refs], stdout=stdout)
        return await stream.docker_save(refs, stdout)

    return save


@pytest.mark.docker
def test_images_sharing_no_layer_are_saved_one_after_another(
    builder: Builder, cluster: str
) -> None:
    base = builder.build("base:1", {"b": os.urandom(2 * MiB)})
    one = builder.build("one:1", {"t": os.urandom(256 << 10)}, base=base)
    other = builder.build("other:1", {"o": os.urandom(MiB)})
    two = builder.build("two:1", {"t": os.urandom(256 << 10)}, base=base)
    calls: list[list[str]] = []

    results = _load(cluster, one, other, two, archive=_recording_save(calls))
    assert calls == [[one, two], [other]]
    assert {r.status for r in results.values()} == {"load-image"}
    total = sum(r.bytes_sent for r in results.values())
    assert 3 * MiB + (512 << 10) < total < 3 * MiB + MiB  # the base once, everything else once
    held = nodes.ctr_images(f"{cluster}-control-plane")
    assert {images.containerd_name(r) for r in (one, other, two)} <= set(held)
    assert {r.status for r in _load(cluster, one, other, two).values()} == {"up-to-date"}


@pytest.mark.docker
def test_a_failed_later_save_names_docker_save_and_creates_no_image(
    builder: Builder, cluster: str
) -> None:
    one = builder.build("one:1", {"f": os.urandom(MiB)})
    other = builder.build("other:1", {"f": os.urandom(MiB)})
    calls: list[list[str]] = []
    with pytest.raises(ImageLoadError, match="docker save failed: no such image"):
        _load(cluster, one, other, archive=_recording_save(calls, fail_after=1))
    assert calls == [[one], [other]]
    assert nodes.ctr_images(f"{cluster}-control-plane") == []  # no index: nothing is named


@pytest.mark.docker
def test_rebuilt_image_sends_only_its_new_layer(builder: Builder, cluster: str) -> None:
    lower = {"l1": os.urandom(3 * MiB), "l2": os.urandom(3 * MiB)}
    old = builder.build("app:1", {**lower, "top": os.urandom(256 << 10)})
    _load(cluster, old)
    new = builder.build("app:2", {**lower, "top": os.urandom(300 << 10)})
    assert _diff_ids(new)[:2] == _diff_ids(old)[:2]

    result = _load(cluster, new)[new]
    assert result.status == "load-image"
    assert 300 << 10 < result.bytes_sent < 1.1 * (300 << 10) + (16 << 10)
    assert images.containerd_name(new) in nodes.ctr_images(f"{cluster}-control-plane")


@pytest.mark.docker
def test_all_nodes_get_the_image_and_only_a_lacking_node_is_loaded(builder: Builder) -> None:
    name = f"lh-img-{uuid.uuid4().hex[:8]}"
    ref = builder.build("a:1", {"f": os.urandom(MiB)})
    try:
        cp, worker = nodes.create_cluster(name, nodes.node_specs(name, workers=1))
        first = _load(name, ref)[ref]
        assert first.nodes == {cp: "load-image", worker: "load-image"}
        image_id = nodes.docker("image", "inspect", "--format", "{{.Id}}", ref).strip()
        nodes.docker("exec", worker, "ctr", "-n", "k8s.io", "images", "rm",
                     images.containerd_name(ref), image_id)  # fmt: skip
        second = _load(name, ref)[ref]
        assert second.nodes == {cp: "up-to-date", worker: "load-image"}
        assert images.containerd_name(ref) in nodes.ctr_images(worker)
    finally:
        nodes.delete_cluster(name)


@pytest.mark.docker
def test_an_image_imported_but_not_unpacked_is_not_present(builder: Builder, cluster: str) -> None:
    """What a load killed during unpacking leaves: the name exists, the snapshot does not."""
    ref = builder.build("a:1", {"f": os.urandom(2 * MiB)})
    node = f"{cluster}-control-plane"
    saved = subprocess.run(["docker", "save", ref], capture_output=True, check=True).stdout
    nodes.docker("exec", "-i", node, "ctr", "-n", "k8s.io", "images", "import", "--no-unpack",
                 "-", input=saved)  # fmt: skip
    assert images.containerd_name(ref) in nodes.ctr_images(node)

    result = _load(cluster, ref)[ref]
    assert result.status == "load-image"
    assert result.bytes_sent < 64 << 10  # every blob was there; only the manifest travelled
    assert _load(cluster, ref)[ref].status == "up-to-date"


@pytest.mark.docker
def test_killed_load_leaves_no_image_and_the_next_run_finishes_it(
    builder: Builder, channel_cluster: str
) -> None:
    cluster = channel_cluster
    layers = {f"l{i}": os.urandom(48 * MiB) for i in range(4)}
    ref = builder.build("big:1", layers)
    node = f"{cluster}-control-plane"
    cli = [sys.executable, "-m", "laconic_helm", "images", "load", "--cluster", cluster, ref]
    loader = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(containerd.HOLD_MARK in row for row in _content(node).values()):
            assert loader.poll() is None, "the load finished before it could be interrupted"
            assert time.monotonic() < deadline, "no layer reached the node"
            time.sleep(0.1)
        loader.send_signal(signal.SIGKILL)
    finally:
        loader.wait()
    assert images.containerd_name(ref) not in nodes.ctr_images(node)

    time.sleep(1)  # the node's importer sees its input end and gives up its lease
    kept = [d for d, row in _content(node).items() if containerd.HOLD_MARK in row]
    assert kept and set(kept) <= set(_diff_ids(ref))

    result = _load(cluster, ref)[ref]
    assert result.status == "load-image"
    assert result.bytes_sent < (4 - len(kept)) * 48 * MiB + MiB  # kept layers did not travel
    assert images.containerd_name(ref) in nodes.ctr_images(node)
    assert not any(containerd.HOLD_MARK in row for row in _content(node).values())


@pytest.mark.docker
def test_legacy_layer_directories_map_to_diff_ids(builder: Builder) -> None:
    """Every v1-named directory of a real `docker save` is resolved, as manifest.json says."""
    base = builder.build("base:1", {"b": os.urandom(MiB)})
    one = builder.build("one:1", {"t": b"one"}, base=base)
    two = builder.build("two:1", {"t": b"two", "u": b"more"}, base=base)
    saved = subprocess.run(["docker", "save", one, two], capture_output=True, check=True).stdout
    layers = LegacyLayers([_diff_ids(one), _diff_ids(two)])
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        for member in tar.getmembers():
            if member.name.endswith("/json"):
                layers.learn(member.name.split("/")[0], tar.extractfile(member).read())  # type: ignore[union-attr]
    expected = {}
    for item in manifest:
        config = json.loads(saved_config(saved, item["Config"]))
        for path, diff in zip(item["Layers"], config["rootfs"]["diff_ids"], strict=True):
            expected[path.split("/")[0]] = diff
    assert layers.diff_of_dir == expected
    # Lower layers keep their directory names across images (the base is the same directory).
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]


def _rewrite(saved: bytes, change: Callable[[str, bytes], bytes]) -> bytes:
    """Copies a tar, passing each regular file's name and data through `change`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(saved)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.isfile():
                data = change(member.name, src.extractfile(member).read())  # type: ignore[union-attr]
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member)
    return out.getvalue()


@pytest.mark.docker
def test_layers_whose_mapping_is_unproven_are_sent_whole(
    builder: Builder, cluster: str, tmp_path: Path
) -> None:
    """A directory whose v1 ID cannot be recomputed is sent anyway and checked at the end."""
    base = builder.build("a:1", {"l1": os.urandom(2 * MiB), "l2": os.urandom(MiB)})
    ref = builder.build("b:1", {"top": os.urandom(100 << 10)}, base=base)
    _load(cluster, base)  # the node now holds every lower layer of b:1
    saved = subprocess.run(["docker", "save", ref], capture_output=True, check=True).stdout

    def unprovable(name: str, data: bytes) -> bytes:
        if name.endswith("/json"):
            return data.replace(b'"created":"', b'"created":"0', 1)
        return data

    archive = tmp_path / "unprovable.tar"
    archive.write_bytes(_rewrite(saved, unprovable))

    async def cat(refs: Sequence[str], stdout: int) -> asyncio.subprocess.Process:
        return await proc.spawn(["cat", str(archive)], stdout=stdout)

    result = _load(cluster, ref, archive=cat)[ref]
    assert result.status == "load-image"
    assert result.bytes_sent > 3 * MiB  # unproven layers travel although the node has them
    assert _load(cluster, ref)[ref].status == "up-to-date"


def saved_config(saved: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def _oci_archive(saved: bytes, name: str) -> bytes:
    """Rewrites a legacy archive as Docker >= 25 with containerd's store writes it: an OCI
    layout, gzip layers, a multi-platform index whose other platform's blobs are absent."""
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        (item,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = tar.extractfile(item["Config"]).read()  # type: ignore[union-attr]
        layers = [gzip.compress(tar.extractfile(p).read(), mtime=0) for p in item["Layers"]]  # type: ignore[union-attr]
    blobs = [config, *layers]
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer), "size": len(layer)} for layer in layers],
    }).encode()  # fmt: skip
    absent = _digest(b"arm64 manifest that was never pulled")
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
             "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent,
             "size": 1234, "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }).encode()  # fmt: skip
    top = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": _digest(index), "size": len(index),
                       "annotations": {"io.containerd.image.name": name}}],
    }).encode()  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        entries = [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (*blobs, manifest, index)]
        for path, data in [*sorted(entries), ("index.json", top), ("oci-layout", b"{}"),
                           ("manifest.json", b"[]")]:  # fmt: skip
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.docker
def test_oci_layout_archives_with_compressed_multi_platform_images(
    builder: Builder, cluster: str, tmp_path: Path
) -> None:
    """The Docker >= 25 archive shape, made here from a real save (this daemon writes legacy)."""
    base = builder.build("base:1", {"b": os.urandom(3 * MiB)})
    one = builder.build("one:1", {"t": os.urandom(200 << 10)}, base=base)
    two = builder.build("two:1", {"t": os.urandom(200 << 10)}, base=base)
    archives = {}
    for ref in (one, two):
        saved = subprocess.run(["docker", "save", ref], capture_output=True, check=True).stdout
        archives[ref] = tmp_path / f"{uuid.uuid4().hex}.tar"
        archives[ref].write_bytes(_oci_archive(saved, images.containerd_name(ref)))

    async def cat(refs: Sequence[str], stdout: int) -> asyncio.subprocess.Process:
        (ref,) = refs
        return await proc.spawn(["cat", str(archives[ref])], stdout=stdout)

    first = _load(cluster, one, archive=cat)[one]
    assert first.status == "load-image" and first.bytes_sent > 3 * MiB
    second = _load(cluster, two, archive=cat)[two]
    assert second.status == "load-image"
    assert second.bytes_sent < 220 << 10  # the shared gzip base blob stayed home
    held = nodes.ctr_images(f"{cluster}-control-plane")
    assert {images.containerd_name(one), images.containerd_name(two)} <= set(held)
    assert _load(cluster, one, two, archive=cat)[two].status == "up-to-date"


# --- bad input: one line, exit code 2, nothing moved ---------------------------------------


def _bad(*args: str) -> str:
    result = CliRunner().invoke(main, ["images", "load", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.docker
def test_missing_local_image_is_named_before_anything_moves(builder: Builder, cluster: str) -> None:
    ref = builder.build("a:1", {"f": b"x"})
    missing = f"{builder.repo}/missing:1"
    line = _bad("--cluster", cluster, ref, missing)
    assert line == f"error: image not present locally: {missing}"
    assert nodes.ctr_images(f"{cluster}-control-plane") == []


@pytest.mark.docker
def test_unknown_cluster_is_named(builder: Builder) -> None:
    ref = builder.build("a:1", {"f": b"x"})
    name = f"lh-img-none-{uuid.uuid4().hex[:6]}"
    assert _bad("--cluster", name, ref).startswith(f'error: unknown cluster "{name}"')


def _lone_container(cluster: str, role: str) -> str:
    """A container labelled as a node of `cluster` that runs no containerd."""
    name = f"{cluster}-{role}"
    nodes.docker("run", "-d", "--name", name, "--label", f"{nodes.CLUSTER_LABEL}={cluster}",
                 "--label", f"{nodes.ROLE_LABEL}={role}", nodes.ensure_node_image(),
                 "/bin/busybox", "sleep", "600")  # fmt: skip
    return name


@pytest.mark.docker
def test_cluster_without_nodes_is_named(builder: Builder) -> None:
    ref = builder.build("a:1", {"f": b"x"})
    name = f"lh-img-{uuid.uuid4().hex[:8]}"
    try:
        _lone_container(name, "external-load-balancer")
        assert _bad("--cluster", name, ref).startswith(f'error: cluster "{name}" has no nodes')
    finally:
        nodes.delete_cluster(name)


@pytest.mark.docker
def test_stopped_node_is_named(builder: Builder, cluster: str) -> None:
    ref = builder.build("a:1", {"f": b"x"})
    nodes.docker("stop", "-t", "0", f"{cluster}-control-plane")
    line = _bad("--cluster", cluster, ref)
    assert (
        line
        == f'error: node {cluster}-control-plane of cluster "{cluster}" is not running (exited)'
    )


@pytest.mark.docker
def test_node_without_containerd_is_named(builder: Builder) -> None:
    ref = builder.build("a:1", {"f": b"x"})
    name = f"lh-img-{uuid.uuid4().hex[:8]}"
    try:
        node = _lone_container(name, "control-plane")
        line = _bad("--cluster", name, ref)
        assert line.startswith(f"error: containerd in node {node} does not answer: ")
    finally:
        nodes.delete_cluster(name)
