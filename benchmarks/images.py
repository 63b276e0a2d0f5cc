"""Image loading into a fresh kind-like node: kind's way against this loader, side by side.

Builds synthetic images offline and fresh stand-in nodes (tests/harness/nodes.py: Debian's
containerd in a container labelled like a kind node), then measures wall seconds and the bytes
that enter the node:

  A   kind at its best: one `docker save` of all images to a temp tar, one `ctr import`
  A1  the way laconic-so used kind: one save-and-import per image
  B   this loader, first load into a fresh node
  C   this loader again, everything present
  D   this loader after rebuilding one image with a new top layer; AD is kind's way (A) for
      that one image into a node that holds the old set; DX is `docker save` of it alone
  E   this loader SIGKILLed half-way through the set (E1), then run again (E2)

With `--kind` the nodes are real kind nodes on the test Docker daemon (REFERENCE.md section
10), and kind's way is kind's own `kind load docker-image`:

  A   `kind load docker-image` of the set, fresh node; B this loader, fresh node
  AC  kind again, everything present; C this loader again
  D   this loader after one image was rebuilt with a new top layer; AD kind for that image
      alone; DX `docker save` of it alone; ADS kind for the whole set after another such
      rebuild (kind saves every image it is given once a node lacks one of them)

Shapes of image set (`--shapes`, default all):

  S  images sharing one large base layer (like real stacks on a Debian base)
  U  images sharing nothing
  L  one image of one big layer
  M  one image of many small layers

A1 needs more than one image (for L and M it is A). The loader runs as the real CLI
(`python -m laconic_helm`), so its figures include interpreter start-up; its peak RSS is
reported too; C runs `--c-runs` times. Each loader mode is one function (LOADERS). The machine
is shared: the load average is printed with the results.

    python benchmarks/images.py                 # every shape at full size (needs ~25 GB disk)
    python benchmarks/images.py --shapes S,L --base-mib 200 --top-mib 20 --big-mib 300  # quick
    python benchmarks/images.py --kind --shapes S,U --base-mib 600 --top-mib 60  # real kind
    python benchmarks/images.py --modes stream,registry   # the loader's two modes (modes.py)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "driver"))

import modes  # noqa: E402
from tests.harness import imagebuild, nodes, realkind  # noqa: E402

from laconic_helm import cluster as kindcluster  # noqa: E402
from laconic_helm import handoff  # noqa: E402
from laconic_helm.spec import Cluster  # noqa: E402

MiB = 1 << 20
IMPORT = [
    "ctr",
    "--namespace=k8s.io",
    "images",
    "import",
    "--all-platforms",
    "--digests",
    "--snapshotter=overlayfs",
    "-",
]


@dataclass
class ImageSet:
    name: str
    refs: list[str]
    rebuild: tuple[str, str | None, int]  # the image rebuilt in D, its base, its new top size
    total: int  # distinct bytes of the set
    shape: str  # what the set is made of, for the results


@dataclass
class Row:
    set: str
    step: str
    seconds: float
    sent: int
    rss_mib: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Run:
    """One loader run: wall seconds of the whole process, bytes it sent, its peak RSS (MiB)."""

    seconds: float
    sent: int
    rss_mib: float


# A loader mode: loads `refs` into `cluster` as one whole process; with `kill_at`, SIGKILLs it
# once that many bytes went into the node (and reports the bytes sent by then).
Loader = Callable[[str, list[str], int | None], Run]


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            chunk = min(left, 16 * MiB)
            out.write(os.urandom(chunk))
            left -= chunk


def build(ref: str, files: dict[str, int], work: Path, base: str | None = None) -> str:
    """Builds `ref` FROM `base` (or scratch) with one COPY layer per random file."""
    context = work / uuid.uuid4().hex
    context.mkdir()
    for name, size in files.items():
        random_file(context / name, size)
    imagebuild.build(ref, context, list(files), base)
    return ref


@dataclass
class Channel:
    """How the loader's streams enter a node: `root` holds each cluster's transfer folder,
    mounted as the driver's kind config mounts it (handoff.py); None leaves nodes without one,
    so streams go through `docker exec -i` (kind's way uses exec either way)."""

    root: Path | None = None

    def folder(self, cluster: str) -> Path | None:
        if self.root is None:
            return None
        folder = self.root / cluster
        folder.mkdir(mode=0o700, parents=True)
        return folder


CHANNEL = Channel()  # set by main from --channel


def fresh_node(prefix: str) -> tuple[str, str]:
    cluster = f"{prefix}-{uuid.uuid4().hex[:6]}"
    folder = CHANNEL.folder(cluster)
    specs = nodes.transfer_node_specs(cluster, folder) if folder else None
    (node,) = nodes.create_cluster(cluster, specs)
    return cluster, node


def kind_load(refs: list[str], node: str, work: Path) -> tuple[float, int]:
    """kind's `load docker-image`: save every image to one temp tar, then import it."""
    start = time.monotonic()
    tar = work / f"images-{uuid.uuid4().hex}.tar"
    subprocess.run(["docker", "save", "-o", str(tar), *refs], check=True)
    size = tar.stat().st_size
    with tar.open("rb") as stdin:
        subprocess.run(
            ["docker", "exec", "-i", node, *IMPORT],
            stdin=stdin,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    tar.unlink()
    return time.monotonic() - start, size


def run_cli(args: list[str], *, kill_at: int | None = None) -> Run:
    """Runs `python -m laconic_helm -o json ARGS` and times the whole process. With `kill_at`,
    SIGKILLs it once that many bytes went into the node."""
    argv = [sys.executable, "-m", "laconic_helm", "-o", "json", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "driver")}
    start = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    sent = peak = 0
    while True:  # the JSON report is small: the pipe holds it meanwhile
        try:
            child.wait(timeout=0.02)  # returns within milliseconds of the exit
            break
        except subprocess.TimeoutExpired:
            pass
        peak = max(peak, _peak_rss(child.pid))
        if kill_at is not None:
            sent = max(sent, _fed(child.pid))
            if sent >= kill_at:
                child.send_signal(signal.SIGKILL)
                child.wait()
                break
    seconds = time.monotonic() - start
    out = child.stdout.read() if child.stdout else b""  # type: ignore[union-attr]
    rss = peak / 1024
    if kill_at is not None:
        return Run(seconds, sent, rss)
    if child.returncode != 0:
        raise SystemExit(f"loader failed ({child.returncode}): {out.decode()}")
    report = json.loads(out)
    return Run(seconds, sum(i["bytes_sent"] for i in report["images"]), rss)


def stream(cluster: str, refs: list[str], kill_at: int | None = None) -> Run:
    """Stream mode: `laconic-helm images load`."""
    return run_cli(["images", "load", "--cluster", cluster, *refs], kill_at=kill_at)


LOADERS: dict[str, Loader] = {"stream": stream}


def _peak_rss(pid: int) -> int:
    """The process's own peak resident set (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fed(pid: int) -> int:
    """Bytes the loader's importers have read so far: its children `docker exec -i ... import`,
    and the `ctr import` processes in the nodes that read its FIFOs (handoff.py; named with its
    process ID, and seen in this host's /proc).

    The loader splices layer bytes, which its own I/O counters do not see; the importers read
    them with read(2), which theirs do.
    """
    kids = {kid.decode() for children in Path(f"/proc/{pid}/task").glob("*/children")
            for kid in _read(children).split()}  # fmt: skip
    fifo = f"{handoff.IN_NODE}/{pid}-".encode()
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        cmdline = _read(proc / "cmdline")
        if b"import" not in cmdline or (proc.name not in kids and fifo not in cmdline):
            continue
        for line in _read(proc / "io").decode().splitlines():
            if line.startswith("rchar:"):
                total += int(line.split()[1])
    return total


def _read(path: Path) -> bytes:
    """A /proc file's content, empty when the process has gone."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def image_bytes(refs: list[str]) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", *refs],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(x) for x in out.split())


def settle() -> None:
    """Flushes dirty pages, so one step's disk writes are not billed to the next."""
    subprocess.run(["sync"], check=True)


def loader_row(name: str, step: str, run: Run, note: str) -> Row:
    return Row(name, step, run.seconds, run.sent, run.rss_mib, note)


def rebuilt_note(s: ImageSet) -> str:
    ref, _, top = s.rebuild
    return f"loader, {ref.rsplit('/', 1)[-1]} rebuilt with a new {top // MiB} MiB top layer"


def run_set(
    s: ImageSet, work: Path, clusters: list[str], repeats: int, c_runs: int, load: Loader
) -> list[Row]:
    """Runs every step for one set; A and B alternate `repeats` times (the machine is shared)."""
    rows: list[Row] = []

    def node(prefix: str) -> tuple[str, str]:
        settle()
        cluster, n = fresh_node(prefix)
        clusters.append(cluster)
        return cluster, n

    previous: list[str] = []
    for _ in range(repeats):
        for cluster in previous:  # only the last run's nodes go on to C, D and AD
            nodes.delete_cluster(cluster)
        cluster_a, node_a = node("bench-a")
        seconds, sent = kind_load(s.refs, node_a, work)
        rows.append(Row(s.name, "A", seconds, sent, note="one save to a temp tar + import"))
        cluster_b, _ = node("bench-b")
        rows.append(loader_row(s.name, "B", load(cluster_b, s.refs, None), "loader, fresh node"))
        previous = [cluster_a, cluster_b]

    if len(s.refs) > 1:
        cluster_a1, node_a1 = node("bench-a1")
        seconds = sent = 0
        for ref in s.refs:
            one, size = kind_load([ref], node_a1, work)
            seconds, sent = seconds + one, sent + size
        rows.append(Row(s.name, "A1", seconds, sent, note="save + import per image"))
        nodes.delete_cluster(cluster_a1)

    settle()
    for _ in range(c_runs):
        rows.append(loader_row(s.name, "C", load(cluster_b, s.refs, None), "loader, all present"))

    cluster_e, _ = node("bench-e")  # before D's rebuild: the set of A and B
    note = "loader SIGKILLed half-way (sent by then)"
    rows.append(loader_row(s.name, "E1", load(cluster_e, s.refs, s.total // 2), note))
    time.sleep(1)
    note = "loader re-run after the kill"
    rows.append(loader_row(s.name, "E2", load(cluster_e, s.refs, None), note))
    nodes.delete_cluster(cluster_e)

    ref, base, top = s.rebuild
    replaced = image_id(ref)
    build(ref, {"top": top}, work, base=base)
    settle()
    rows.append(loader_row(s.name, "D", load(cluster_b, s.refs, None), rebuilt_note(s)))
    settle()
    seconds, sent = kind_load([ref], node_a, work)
    rows.append(Row(s.name, "AD", seconds, sent, note="kind's way (A) for that image alone"))
    settle()
    start = time.monotonic()
    subprocess.run(["docker", "save", ref], stdout=subprocess.DEVNULL, check=True)
    note = "`docker save` of that image, discarded: the floor for D on this Docker"
    rows.append(Row(s.name, "DX", time.monotonic() - start, 0, note=note))
    subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)
    for cluster in previous:
        nodes.delete_cluster(cluster)
    return rows


def kind_create(cluster: str, kubeconfig: Path) -> None:
    """A real kind cluster as the tests make one (the node image built here, this host's
    patches, rendered by the driver from a spec), Ready before any load is timed."""
    config = kindcluster.render_kind_config(
        Cluster.model_validate(realkind.cluster_fields(name=cluster)),
        transfer=CHANNEL.folder(cluster),
    )
    argv = ["kind", "create", "cluster", "--name", cluster, "--config", "-"]
    argv += ["--kubeconfig", str(kubeconfig), "--wait", "300s"]
    done = subprocess.run(argv, input=config, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kind create cluster {cluster} failed: {done.stderr.strip()}")


def kind_load_docker_image(cluster: str, refs: list[str]) -> tuple[float, bool]:
    """kind's own `kind load docker-image`; returns its seconds and whether it loaded (it skips
    when every node holds every image's ID under its name)."""
    start = time.monotonic()
    done = subprocess.run(
        ["kind", "load", "docker-image", "--name", cluster, *refs],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"kind load docker-image failed: {done.stderr.strip()}")
    return seconds, "not yet present" in done.stderr


def saved(refs: list[str]) -> tuple[float, int]:
    """`docker save` of `refs` into a pipe, discarded: its seconds and the archive's size, which
    is what kind streams into a node for the same names."""
    start = time.monotonic()
    size = 0
    with subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        while chunk := child.stdout.read(MiB):
            size += len(chunk)
    if child.returncode != 0:
        raise SystemExit(f"docker save failed ({child.returncode})")
    return time.monotonic() - start, size


def run_kind(
    sets: list[ImageSet], work: Path, clusters: list[str], repeats: int, c_runs: int, load: Loader
) -> list[Row]:
    """Every step on real kind nodes; A and B alternate `repeats` times (the machine is shared).

    One pair of fresh nodes per repeat serves every set: the sets share no layer, and a kind
    create costs far more than a load."""
    rows: list[Row] = []
    kubeconfig = work / "kubeconfig"

    def fresh(role: str) -> str:
        cluster = f"bench-{os.getpid()}-{role}-{uuid.uuid4().hex[:4]}"
        clusters.append(cluster)  # named so the test harness's orphan clean-up knows it
        kind_create(cluster, kubeconfig)
        return cluster

    def drop(cluster: str) -> None:
        realkind.delete_cluster("kind", cluster, kubeconfig)
        clusters.remove(cluster)

    archives = {s.name: saved(s.refs)[1] for s in sets}  # what kind streams into a node
    previous: list[str] = []
    for _ in range(repeats):
        for cluster in previous:  # only the last run's nodes go on to C, D and AD
            drop(cluster)
        cluster_a, cluster_b = fresh("a"), fresh("b")
        for s in sets:
            settle()
            seconds, loaded = kind_load_docker_image(cluster_a, s.refs)
            note = "`kind load docker-image`, fresh node"
            rows.append(Row(s.name, "A", seconds, archives[s.name] if loaded else 0, note=note))
            settle()
            run = load(cluster_b, s.refs, None)
            rows.append(loader_row(s.name, "B", run, "loader, fresh node"))
        previous = [cluster_a, cluster_b]

    for s in sets:
        settle()
        seconds, loaded = kind_load_docker_image(cluster_a, s.refs)
        note = "kind again, everything present"
        rows.append(Row(s.name, "AC", seconds, archives[s.name] if loaded else 0, note=note))
        settle()
        for _ in range(c_runs):
            run = load(cluster_b, s.refs, None)
            rows.append(loader_row(s.name, "C", run, "loader, all present"))

        ref, base, top = s.rebuild
        replaced = image_id(ref)
        build(ref, {"top": top}, work, base=base)
        settle()
        rows.append(loader_row(s.name, "D", load(cluster_b, s.refs, None), rebuilt_note(s)))
        settle()
        seconds, loaded = kind_load_docker_image(cluster_a, [ref])
        settle()
        floor, size = saved([ref])
        note = "kind for that image alone"
        rows.append(Row(s.name, "AD", seconds, size if loaded else 0, note=note))
        note = "`docker save` of that image, discarded: the floor for D on this Docker"
        rows.append(Row(s.name, "DX", floor, 0, note=note))
        subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)

        replaced = image_id(ref)
        build(ref, {"top": top}, work, base=base)
        settle()
        seconds, loaded = kind_load_docker_image(cluster_a, s.refs)
        note = "kind for the whole set after another such rebuild"
        rows.append(Row(s.name, "ADS", seconds, saved(s.refs)[1] if loaded else 0, note=note))
        subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)
    for cluster in previous:
        drop(cluster)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| set | step | seconds | sent into the node | loader peak RSS | what |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        rss = f"{r.rss_mib:.0f} MiB" if r.rss_mib else ""
        lines.append(
            f"| {r.set} | {r.step} | {r.seconds:.2f} | {r.sent / MiB:.1f} MiB | {rss} | {r.note} |"
        )
    return "\n".join(lines)


def fastest(rows: list[Row]) -> dict[tuple[str, str], Row]:
    """Each (set, step)'s fastest row: of repeated steps, the least disturbed run counts."""
    by: dict[tuple[str, str], Row] = {}
    for r in rows:
        if (r.set, r.step) not in by or r.seconds < by[(r.set, r.step)].seconds:
            by[(r.set, r.step)] = r
    return by


def rerun_line(rows: list[Row], name: str) -> str:
    """Step C over its runs: median, range and bytes, against the 0.5 s whole-process target."""
    runs = sorted(r.seconds for r in rows if r.set == name and r.step == "C")
    sent = max(r.sent for r in rows if r.set == name and r.step == "C")
    return (
        f"set {name}: C median {statistics.median(runs):.2f} s ({runs[0]:.2f}-{runs[-1]:.2f},"
        f" {len(runs)} runs), {sent} bytes (< 0.5 s whole process, 0 bytes)"
    )


def targets(rows: list[Row], sets: list[ImageSet]) -> str:
    """The issue's targets, computed from the rows."""
    by = fastest(rows)
    out = []
    for s in sets:
        name = s.name
        a, b, d, ad, e1, e2 = (by[(name, step)] for step in ("A", "B", "D", "AD", "E1", "E2"))
        a1 = by.get((name, "A1"))
        out += [
            f"set {name}: B/A = {b.seconds / a.seconds:.2f} (<= 1.0, aim 0.9)"
            + (f", B/A1 = {b.seconds / a1.seconds:.2f}" if a1 else ""),
            rerun_line(rows, name),
            f"set {name}: D sent {d.sent / s.rebuild[2]:.3f}x the changed layer (<= 1.1),"
            f" D/AD = {d.seconds / ad.seconds:.2f} (<= 0.35); floor DX/AD ="
            f" {by[(name, 'DX')].seconds / ad.seconds:.2f}",
            f"set {name}: E1 sent {e1.sent / MiB:.0f} MiB before the kill; E2 sent"
            f" {e2.sent / MiB:.0f} MiB of {s.total / MiB:.0f} MiB,"
            f" E2/A = {e2.seconds / a.seconds:.2f}",
            f"set {name}: loader peak RSS {max(r.rss_mib or 0 for r in rows if r.set == name):.0f}"
            " MiB (< 200 MiB)",
        ]
    return "\n".join(out)


def kind_targets(rows: list[Row], sets: list[ImageSet]) -> str:
    """The ratios of the real-kind mode, computed from the rows."""
    by = fastest(rows)
    out = []
    for s in sets:
        name = s.name
        a, b, ac, d, ad, dx, ads = (
            by[(name, step)] for step in ("A", "B", "AC", "D", "AD", "DX", "ADS")
        )
        out += [
            f"set {name}: B/A = {b.seconds / a.seconds:.2f} (<= 1.0, aim 0.9)",
            rerun_line(rows, name) + f"; kind's re-run AC = {ac.seconds:.2f} s, {ac.sent} bytes",
            f"set {name}: D sent {d.sent / s.rebuild[2]:.3f}x the changed layer (<= 1.1),"
            f" D/B = {d.seconds / b.seconds:.2f}, D/AD = {d.seconds / ad.seconds:.2f} (<= 0.35),"
            f" D/ADS = {d.seconds / ads.seconds:.2f}; floor DX/AD = {dx.seconds / ad.seconds:.2f}",
            f"set {name}: loader peak RSS {max(r.rss_mib or 0 for r in rows if r.set == name):.0f}"
            " MiB (< 200 MiB)",
        ]
    return "\n".join(out)


def image_id(ref: str) -> str:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", ref]
    return subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()


def shared_set(args: argparse.Namespace, repo: str, work: Path) -> ImageSet:
    """S: images on one shared base layer."""
    base = build(f"{repo}/base:1", {"base": args.base_mib * MiB}, work)
    refs = [
        build(f"{repo}/s{i}:1", {"top": args.top_mib * MiB}, work, base=base)
        for i in range(args.images)
    ]
    base_bytes = image_bytes([base])
    total = base_bytes + image_bytes(refs) - args.images * base_bytes
    shape = f"{args.images} images, a {args.base_mib} MiB base shared by {args.top_mib} MiB tops"
    return ImageSet("S", refs, (refs[0], base, args.top_mib * MiB), total, shape)


def unshared_set(args: argparse.Namespace, repo: str, work: Path) -> ImageSet:
    """U: images sharing nothing, each a lower and a top layer."""
    lowers = [
        build(f"{repo}/u{i}-lower:1", {"data": args.unique_mib * MiB}, work)
        for i in range(args.images)
    ]
    refs = [
        build(f"{repo}/u{i}:1", {"top": args.unique_top_mib * MiB}, work, base=lower)
        for i, lower in enumerate(lowers)
    ]
    rebuild = (refs[0], lowers[0], args.unique_top_mib * MiB)
    shape = f"{args.images} images of {args.unique_mib} + {args.unique_top_mib} MiB, no sharing"
    return ImageSet("U", refs, rebuild, image_bytes(refs), shape)


def single(ref: str, lower: str) -> str:
    """Names the image `lower` also as `ref`, the set's one image: D rebuilds `ref` on `lower`."""
    subprocess.run(["docker", "tag", lower, ref], check=True)
    return ref


def big_set(args: argparse.Namespace, repo: str, work: Path) -> ImageSet:
    """L: one image of one big layer."""
    lower = build(f"{repo}/l0-lower:1", {"big": args.big_mib * MiB}, work)
    ref = single(f"{repo}/l0:1", lower)
    top = args.unique_top_mib * MiB
    return ImageSet(
        "L", [ref], (ref, lower, top), image_bytes([ref]), f"1 image, one {args.big_mib} MiB layer"
    )


def many_set(args: argparse.Namespace, repo: str, work: Path) -> ImageSet:
    """M: one image of many small layers."""
    files = {f"layer{i:03}": args.layer_mib * MiB for i in range(args.layers)}
    lower = build(f"{repo}/m0-lower:1", files, work)
    ref = single(f"{repo}/m0:1", lower)
    top = args.layer_mib * MiB
    shape = f"1 image of {args.layers} layers of {args.layer_mib} MiB"
    return ImageSet("M", [ref], (ref, lower, top), image_bytes([ref]), shape)


SHAPES: dict[str, Callable[[argparse.Namespace, str, Path], ImageSet]] = {
    "S": shared_set,
    "U": unshared_set,
    "L": big_set,
    "M": many_set,
}


def shapes_arg(value: str) -> list[str]:
    chosen = [v.strip().upper() for v in value.split(",") if v.strip()]
    if unknown := [v for v in chosen if v not in SHAPES]:
        raise argparse.ArgumentTypeError(f"unknown shape(s) {', '.join(unknown)}: pick of S,U,L,M")
    return list(dict.fromkeys(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", type=shapes_arg, default=list(SHAPES), help="sets to run, e.g. S,L (all)"
    )
    parser.add_argument("--base-mib", type=int, default=1200, help="set S shared base layer")
    parser.add_argument("--top-mib", type=int, default=100, help="set S top layer per image")
    parser.add_argument("--unique-mib", type=int, default=280, help="set U lower layer per image")
    parser.add_argument(
        "--unique-top-mib", type=int, default=8, help="set U top layer per image; L's rebuilt top"
    )
    parser.add_argument("--big-mib", type=int, default=1024, help="set L's one layer")
    parser.add_argument("--layers", type=int, default=60, help="set M's layers")
    parser.add_argument("--layer-mib", type=int, default=4, help="set M's layer size")
    parser.add_argument("--images", type=int, default=3, help="images in sets S and U")
    parser.add_argument("--repeats", type=int, default=2, help="runs of A and of B per set")
    parser.add_argument("--c-runs", type=int, default=5, help="runs of C (re-run) per set")
    parser.add_argument("--loader", choices=sorted(LOADERS), default="stream", help="loader mode")
    parser.add_argument(
        "--kind", action="store_true", help="real kind nodes, kind's own `kind load docker-image`"
    )
    parser.add_argument(
        "--modes", default="", help="compare loader modes instead (stream,registry): modes.py"
    )
    parser.add_argument(
        "--channel",
        choices=("transfer-folder", "exec"),
        default="transfer-folder",
        help="how streams enter the loader's nodes: a FIFO in a mounted folder, as on the "
        "clusters the driver creates, or docker exec's stdin, as on older ones",
    )
    args = parser.parse_args()
    if args.modes and args.kind:
        parser.error("--modes runs on stand-in nodes only, not with --kind")
    load = LOADERS[args.loader]
    if args.kind:  # images, nodes and loader all on the test daemon real kind runs on
        os.environ["PATH"] = f"{realkind.CACHE / 'bin'}{os.pathsep}{os.environ['PATH']}"
        os.environ["DOCKER_HOST"] = realkind.DOCKER_HOST
        if why := realkind.missing():
            raise SystemExit(f"real kind cannot run here: {why}")

    repo = f"laconic-helm-bench/{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="laconic-helm-bench-"))
    CHANNEL.root = work / "transfer" if args.channel == "transfer-folder" else None
    clusters: list[str] = []
    rows: list[Row] = []
    sets: list[ImageSet] = []
    started = time.monotonic()
    print(f"load average at the start {_load()}", file=sys.stderr)
    try:
        print(f"building images under {repo} ...", file=sys.stderr)
        sets = [SHAPES[shape](args, repo, work) for shape in args.shapes]
        for x in sets:
            print(f"set {x.name}: {x.shape}, {x.total / MiB:.0f} MiB distinct", file=sys.stderr)
        if args.modes:
            rows += modes.run(sets, work, modes.parse(args.modes), args.repeats, CHANNEL)
        elif args.kind:
            rows += run_kind(sets, work, clusters, args.repeats, args.c_runs, load)
        else:
            for x in sets:
                rows += run_set(x, work, clusters, args.repeats, args.c_runs, load)
                print(f"set {x.name} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        for cluster in clusters:
            if args.kind:
                realkind.delete_cluster("kind", cluster, work / "kubeconfig")
            else:
                nodes.delete_cluster(cluster)
        listed = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
             f"reference={repo}/*"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        # By tag, derived images first: a base goes with its last child.
        for ref in sorted(listed, key=lambda r: ("base" in r or "-lower" in r, r)):
            subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    if args.modes:
        print(modes.table(rows))
        print()
        print(modes.summary(rows, {x.name: x.rebuild[2] for x in sets}))
    else:
        print(table(rows))
        print()
        print((kind_targets if args.kind else targets)(rows, sets))
    print()
    for x in sets:
        print(f"set {x.name}: {x.shape}, {x.total / MiB:.0f} MiB distinct")
    print(
        f"loader mode {args.loader}, streams through {args.channel};"
        f" {os.cpu_count()} cores; load average at the end {_load()};"
        f" the run took {time.monotonic() - started:.0f} s."
    )


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
