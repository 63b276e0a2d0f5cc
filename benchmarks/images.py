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

Set S: images sharing one large base layer (like real stacks on a Debian base); set U: images
sharing nothing. The loader runs as the real CLI (`python -m laconic_helm`), so its figures
include interpreter start-up; its peak RSS is reported too. The machine is shared: the load
average is printed with the results.

    python benchmarks/images.py                 # set S 1.5 GiB, set U 0.9 GiB (needs ~15 GB disk)
    python benchmarks/images.py --base-mib 200 --top-mib 20 --unique-mib 60   # a quick run
    python benchmarks/images.py --kind --base-mib 600 --top-mib 60 --unique-mib 200  # real kind
    python benchmarks/images.py --modes stream,registry   # the loader's two modes (modes.py)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "driver"))

import modes  # noqa: E402
from tests.harness import imagebuild, nodes, realkind  # noqa: E402

from laconic_helm import cluster as kindcluster  # noqa: E402
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


@dataclass
class Row:
    set: str
    step: str
    seconds: float
    sent: int
    rss_mib: float | None = None
    note: str = ""


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


def fresh_node(prefix: str) -> tuple[str, str]:
    cluster = f"{prefix}-{uuid.uuid4().hex[:6]}"
    (node,) = nodes.create_cluster(cluster)
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


def loader(
    cluster: str, refs: list[str], *, kill_at: int | None = None
) -> tuple[float, int, float]:
    """Runs the CLI; returns (seconds, bytes sent, peak RSS MiB). With `kill_at`, SIGKILLs it
    once that many bytes went into the node and returns the bytes sent by then."""
    argv = [
        sys.executable,
        "-m",
        "laconic_helm",
        "-o",
        "json",
        "images",
        "load",
        "--cluster",
        cluster,
        *refs,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "driver")}
    start = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    sent = peak = 0
    while child.poll() is None:  # the JSON report is small: the pipe holds it meanwhile
        peak = max(peak, _peak_rss(child.pid))
        if kill_at is not None:
            sent = max(sent, _fed(child.pid))
            if sent >= kill_at:
                child.send_signal(signal.SIGKILL)
                child.wait()
                break
        time.sleep(0.02)
    seconds = time.monotonic() - start
    out = child.stdout.read() if child.stdout else b""  # type: ignore[union-attr]
    rss = peak / 1024
    if kill_at is not None:
        return seconds, sent, rss
    if child.returncode != 0:
        raise SystemExit(f"loader failed ({child.returncode}): {out.decode()}")
    report = json.loads(out)
    return seconds, sum(i["bytes_sent"] for i in report["images"]), rss


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
    """Bytes the loader's importer children (`docker exec -i ... import`) have read so far.

    The loader splices layer bytes, which its own I/O counters do not see; the importer's
    client reads them with read(2), which they do.
    """
    total = 0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = children.read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if b"import" not in Path(f"/proc/{kid}/cmdline").read_bytes():
                    continue
                for line in Path(f"/proc/{kid}/io").read_text().splitlines():
                    if line.startswith("rchar:"):
                        total += int(line.split()[1])
            except OSError:
                continue
    return total


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


def run_set(
    name: str,
    refs: list[str],
    rebuild: tuple[str, str | None, int],
    total: int,
    work: Path,
    clusters: list[str],
    repeats: int,
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
        seconds, sent = kind_load(refs, node_a, work)
        rows.append(Row(name, "A", seconds, sent, note="one save to a temp tar + import"))
        cluster_b, _ = node("bench-b")
        seconds, sent, rss = loader(cluster_b, refs)
        rows.append(Row(name, "B", seconds, sent, rss, "loader, fresh node"))
        previous = [cluster_a, cluster_b]

    cluster_a1, node_a1 = node("bench-a1")
    seconds = sent = 0
    for ref in refs:
        s, b = kind_load([ref], node_a1, work)
        seconds, sent = seconds + s, sent + b
    rows.append(Row(name, "A1", seconds, sent, note="save + import per image"))
    nodes.delete_cluster(cluster_a1)

    settle()
    seconds, sent, rss = loader(cluster_b, refs)
    rows.append(Row(name, "C", seconds, sent, rss, "loader, all present"))

    ref, base, top = rebuild
    replaced = image_id(ref)
    build(ref, {"top": top}, work, base=base)
    settle()
    seconds, sent, rss = loader(cluster_b, refs)
    note = f"loader, {ref.rsplit('/', 1)[-1]} rebuilt with a new {top // MiB} MiB top layer"
    rows.append(Row(name, "D", seconds, sent, rss, note))
    settle()
    seconds, sent = kind_load([ref], node_a, work)
    rows.append(Row(name, "AD", seconds, sent, note="kind's way (A) for that image alone"))
    settle()
    start = time.monotonic()
    subprocess.run(["docker", "save", ref], stdout=subprocess.DEVNULL, check=True)
    note = "`docker save` of that image, discarded: the floor for D on this Docker"
    rows.append(Row(name, "DX", time.monotonic() - start, 0, note=note))
    subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)

    cluster_e, _ = node("bench-e")
    seconds, sent, rss = loader(cluster_e, refs, kill_at=total // 2)
    rows.append(Row(name, "E1", seconds, sent, rss, "loader SIGKILLed half-way (sent by then)"))
    time.sleep(1)
    seconds, sent, rss = loader(cluster_e, refs)
    rows.append(Row(name, "E2", seconds, sent, rss, "loader re-run after the kill"))
    for cluster in (*previous, cluster_e):
        nodes.delete_cluster(cluster)
    return rows


def kind_create(cluster: str, kubeconfig: Path) -> None:
    """A real kind cluster as the tests make one (the node image built here, this host's
    patches, rendered by the driver from a spec), Ready before any load is timed."""
    config = kindcluster.render_kind_config(
        Cluster.model_validate(realkind.cluster_fields(name=cluster))
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


def run_kind(sets: list[ImageSet], work: Path, clusters: list[str], repeats: int) -> list[Row]:
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
            seconds, sent, rss = loader(cluster_b, s.refs)
            rows.append(Row(s.name, "B", seconds, sent, rss, "loader, fresh node"))
        previous = [cluster_a, cluster_b]

    for s in sets:
        settle()
        seconds, loaded = kind_load_docker_image(cluster_a, s.refs)
        note = "kind again, everything present"
        rows.append(Row(s.name, "AC", seconds, archives[s.name] if loaded else 0, note=note))
        settle()
        seconds, sent, rss = loader(cluster_b, s.refs)
        rows.append(Row(s.name, "C", seconds, sent, rss, "loader, all present"))

        ref, base, top = s.rebuild
        replaced = image_id(ref)
        build(ref, {"top": top}, work, base=base)
        settle()
        seconds, sent, rss = loader(cluster_b, s.refs)
        note = f"loader, {ref.rsplit('/', 1)[-1]} rebuilt with a new {top // MiB} MiB top layer"
        rows.append(Row(s.name, "D", seconds, sent, rss, note))
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
            f"| {r.set} | {r.step} | {r.seconds:.1f} | {r.sent / MiB:.1f} MiB | {rss} | {r.note} |"
        )
    return "\n".join(lines)


def fastest(rows: list[Row]) -> dict[tuple[str, str], Row]:
    """Each (set, step)'s fastest row: of repeated steps, the least disturbed run counts."""
    by: dict[tuple[str, str], Row] = {}
    for r in rows:
        if (r.set, r.step) not in by or r.seconds < by[(r.set, r.step)].seconds:
            by[(r.set, r.step)] = r
    return by


def targets(rows: list[Row], changed: dict[str, int], totals: dict[str, int]) -> str:
    """The issue's targets, computed from the rows."""
    by = fastest(rows)
    out = []
    for name in sorted({r.set for r in rows}):
        a, a1, b, c, d, ad, e1, e2 = (
            by[(name, s)] for s in ("A", "A1", "B", "C", "D", "AD", "E1", "E2")
        )
        out += [
            f"set {name}: B/A = {b.seconds / a.seconds:.2f} (<= 1.0)",
            f"set {name}: B/A1 = {b.seconds / a1.seconds:.2f}"
            + (" (<= 0.75)" if name == "S" else ""),
            f"set {name}: C = {c.seconds:.2f} s, {c.sent} bytes (<= 1 s, 0 bytes)",
            f"set {name}: D sent {d.sent / changed[name]:.3f}x the changed layer (<= 1.1),"
            f" D/AD = {d.seconds / ad.seconds:.2f} (<= 0.35); floor DX/AD ="
            f" {by[(name, 'DX')].seconds / ad.seconds:.2f}",
            f"set {name}: E1 sent {e1.sent / MiB:.0f} MiB before the kill; E2 sent"
            f" {e2.sent / MiB:.0f} MiB of {totals[name] / MiB:.0f} MiB,"
            f" E2/A = {e2.seconds / a.seconds:.2f}",
            f"set {name}: loader peak RSS {max(r.rss_mib or 0 for r in rows if r.set == name):.0f}"
            " MiB (< 200 MiB)",
        ]
    return "\n".join(out)


def kind_targets(rows: list[Row], changed: dict[str, int]) -> str:
    """The ratios of the real-kind mode, computed from the rows."""
    by = fastest(rows)
    out = []
    for name in sorted({r.set for r in rows}):
        a, b, ac, c, d, ad, dx, ads = (
            by[(name, s)] for s in ("A", "B", "AC", "C", "D", "AD", "DX", "ADS")
        )
        out += [
            f"set {name}: B/A = {b.seconds / a.seconds:.2f} (<= 1.0)",
            f"set {name}: C = {c.seconds:.2f} s, {c.sent} bytes (<= 1 s, 0 bytes);"
            f" kind's re-run AC = {ac.seconds:.2f} s, {ac.sent} bytes",
            f"set {name}: D sent {d.sent / changed[name]:.3f}x the changed layer (<= 1.1),"
            f" D/B = {d.seconds / b.seconds:.2f}, D/AD = {d.seconds / ad.seconds:.2f} (<= 0.35),"
            f" D/ADS = {d.seconds / ads.seconds:.2f}; floor DX/AD = {dx.seconds / ad.seconds:.2f}",
            f"set {name}: loader peak RSS {max(r.rss_mib or 0 for r in rows if r.set == name):.0f}"
            " MiB (< 200 MiB)",
        ]
    return "\n".join(out)


def image_id(ref: str) -> str:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", ref]
    return subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()


def build_sets(args: argparse.Namespace, repo: str, work: Path) -> list[ImageSet]:
    """Set S (images on one shared base) and set U (images sharing nothing)."""
    base = build(f"{repo}/base:1", {"base": args.base_mib * MiB}, work)
    shared = [
        build(f"{repo}/s{i}:1", {"top": args.top_mib * MiB}, work, base=base)
        for i in range(args.images)
    ]
    lowers = [
        build(f"{repo}/u{i}-lower:1", {"data": args.unique_mib * MiB}, work)
        for i in range(args.images)
    ]
    unique = [
        build(f"{repo}/u{i}:1", {"top": args.unique_top_mib * MiB}, work, base=lower)
        for i, lower in enumerate(lowers)
    ]
    base_bytes = image_bytes([base])
    return [
        ImageSet(
            "S",
            shared,
            (shared[0], base, args.top_mib * MiB),
            base_bytes + image_bytes(shared) - args.images * base_bytes,
        ),
        ImageSet(
            "U", unique, (unique[0], lowers[0], args.unique_top_mib * MiB), image_bytes(unique)
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-mib", type=int, default=1200, help="set S shared base layer")
    parser.add_argument("--top-mib", type=int, default=100, help="set S top layer per image")
    parser.add_argument("--unique-mib", type=int, default=280, help="set U lower layer per image")
    parser.add_argument("--unique-top-mib", type=int, default=8, help="set U top layer per image")
    parser.add_argument("--images", type=int, default=3, help="images per set")
    parser.add_argument("--repeats", type=int, default=2, help="runs of A and of B per set")
    parser.add_argument(
        "--kind", action="store_true", help="real kind nodes, kind's own `kind load docker-image`"
    )
    parser.add_argument(
        "--modes", default="", help="compare loader modes instead (stream,registry): modes.py"
    )
    args = parser.parse_args()
    if args.modes and args.kind:
        parser.error("--modes runs on stand-in nodes only, not with --kind")
    if args.kind:  # images, nodes and loader all on the test daemon real kind runs on
        os.environ["PATH"] = f"{realkind.CACHE / 'bin'}{os.pathsep}{os.environ['PATH']}"
        os.environ["DOCKER_HOST"] = realkind.DOCKER_HOST
        if why := realkind.missing():
            raise SystemExit(f"real kind cannot run here: {why}")

    repo = f"laconic-helm-bench/{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="laconic-helm-bench-"))
    clusters: list[str] = []
    rows: list[Row] = []
    try:
        print(f"building images under {repo} ...", file=sys.stderr)
        sets = build_sets(args, repo, work)
        print(
            ", ".join(f"set {x.name}: {x.total / MiB:.0f} MiB distinct" for x in sets),
            file=sys.stderr,
        )
        if args.modes:
            rows += modes.run(sets, work, modes.parse(args.modes), args.repeats)
        elif args.kind:
            rows += run_kind(sets, work, clusters, args.repeats)
        else:
            for x in sets:
                rows += run_set(x.name, x.refs, x.rebuild, x.total, work, clusters, args.repeats)
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
    load = os.getloadavg()
    print(modes.table(rows) if args.modes else table(rows))
    print()
    changed = {x.name: x.rebuild[2] for x in sets}
    if args.modes:
        print(modes.summary(rows, changed))
    elif args.kind:
        print(kind_targets(rows, changed))
    else:
        print(targets(rows, changed, {x.name: x.total for x in sets}))
    print(
        f"\n{args.images} images per set; set S shares a {args.base_mib} MiB base"
        f" (tops {args.top_mib} MiB), set U shares nothing"
        f" ({args.unique_mib} + {args.unique_top_mib} MiB each). {os.cpu_count()} cores;"
        f" load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}."
    )


if __name__ == "__main__":
    main()
