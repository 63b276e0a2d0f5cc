"""Stream and registry modes of `laconic-helm images load`, side by side on the same image sets.

Called by `python benchmarks/images.py --modes stream,registry`. Every node here is a stand-in
node (tests/harness/nodes.py) on one user-defined docker network made for the run, with the
containerd config registry mode needs (version 2, registry host config read from
/etc/containerd/certs.d); both modes get the same kind of node. Registry mode runs its own
local registry container `<cluster>-registry` (the offline test image of
tests/harness/registry.py, on a free loopback port, data in a volume of the same name).

Steps, per set and mode:

  B   first load into a fresh node (registry mode: a fresh registry as well, which it creates)
  C   the same again, everything present
  D   after one image was rebuilt with a new top layer; AD is kind's way (save to a temp tar,
      import) for that image alone into a node that holds the old set, so D/AD per mode
  B2  first load into a fresh 2-node cluster (control plane and one worker)

B, D and B2 run `repeats` times, the modes' order alternating, and the fastest run counts;
A (kind's way, fresh node) runs beside B. After the repeats one more rebuild is split into
what each mode pays first: DX, `docker save` of the image alone (stream's floor); DP,
`docker push` of it alone to the registry-mode cluster's registry (registry mode's push, gzip
of the new layer included); DL, the registry-mode loader after that push (checks and pulls).

Bytes: stream's are the loader's own count of what it wrote into the nodes' importers
(uncompressed, summed over nodes); registry mode's "pushed" is its report of the compressed
layers `docker push` sent, and "into the nodes" is the growth of the nodes' network receive
counters (the pulls, compressed, with HTTP overhead) while it ran.

Imported by images.py, which puts the repository and the driver on sys.path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.harness import nodes, realkind
from tests.harness import registry as test_registry
from tests.harness.loopback import free_port

import images as bench
from images import ImageSet, MiB, Row
from laconic_helm import registry
from laconic_helm.images import LocalImage, containerd_name

MODES = ("stream", "registry")


@dataclass
class ModeRow(Row):
    mode: str = ""
    pushed: int = 0  # registry mode: compressed bytes `docker push` sent


def parse(value: str) -> list[str]:
    """`--modes stream,registry` -> ["stream", "registry"]; refuses unknown names."""
    chosen = [m.strip() for m in value.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODES))
    if unknown or not chosen:
        raise SystemExit(f"--modes takes {','.join(MODES)}; got {value!r}")
    return list(dict.fromkeys(chosen))


class Bench:
    """The run's docker network, clusters and registries, and the loader in either mode."""

    def __init__(self, work: Path, channel: bench.Channel) -> None:
        self.work = work
        self.channel = channel
        self.network = f"bench-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.clusters: dict[str, int] = {}  # cluster -> its registry's port
        self.registry_image = ""

    def __enter__(self) -> Bench:
        # The registry binary the test image is made of: where scripts/provision-tools puts it.
        os.environ["PATH"] = f"{realkind.CACHE / 'bin'}{os.pathsep}{os.environ['PATH']}"
        self.registry_image = test_registry.ensure_registry_image()
        nodes.docker("network", "create", self.network)
        return self

    def __exit__(self, *exc: object) -> None:
        for cluster in list(self.clusters):
            self.drop(cluster)
        nodes.docker("network", "rm", self.network, check=False)

    def cluster(self, role: str, workers: int = 0) -> tuple[str, list[str]]:
        """A fresh stand-in cluster on the run's network, its nodes' containerd ready."""
        bench.settle()
        name = f"bench-{role}-{uuid.uuid4().hex[:6]}"
        specs = nodes.registry_node_specs(name, self.network, workers, self.channel.folder(name))
        self.clusters[name] = free_port()
        return name, nodes.create_cluster(name, specs)

    def drop(self, cluster: str) -> None:
        """Removes the cluster's nodes, its registry container and volume, and the tags
        registry mode gave the images for it."""
        port = self.clusters.pop(cluster)
        nodes.delete_cluster(cluster)
        name = f"{cluster}-registry"
        nodes.docker("rm", "--force", "--volumes", name, check=False)
        nodes.docker("volume", "rm", name, check=False)
        tags = nodes.docker(
            "images", "--format", "{{.Repository}}:{{.Tag}}",
            "--filter", f"reference=localhost:{port}/*/*/*",
        ).split()  # fmt: skip
        if tags:
            nodes.docker("rmi", *tags, check=False)  # untags: the images keep their own names

    def load(self, mode: str, cluster: str, refs: list[str]) -> tuple[float, int, int, float]:
        """Runs `images load` in `mode`; returns (seconds, bytes pushed, bytes into the nodes,
        peak RSS MiB of the loader)."""
        argv = [sys.executable, "-m", "laconic_helm", "-o", "json", "images", "load"]
        argv += ["--cluster", cluster]
        if mode == "registry":
            argv += ["--via", "registry", "--registry-port", str(self.clusters[cluster])]
            argv += ["--registry-image", self.registry_image]
        members = nodes.list_nodes(cluster)
        before = received(members)
        env = {**os.environ, "PYTHONPATH": str(bench.REPO / "driver")}
        start = time.monotonic()
        child = subprocess.Popen(
            [*argv, *refs], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        peak = 0
        while child.poll() is None:  # the JSON report is small: the pipe holds it meanwhile
            peak = max(peak, bench._peak_rss(child.pid))
            time.sleep(0.02)
        seconds = time.monotonic() - start
        out = child.stdout.read() if child.stdout else b""
        if child.returncode != 0:
            raise SystemExit(f"{mode} loader failed ({child.returncode}): {out.decode()}")
        report = json.loads(out)["images"]
        if mode == "stream":
            return seconds, 0, sum(i["bytes_sent"] for i in report), peak / 1024
        pushed = sum(i["bytes_pushed"] for i in report)
        return seconds, pushed, received(members) - before, peak / 1024

    def pushed_name(self, cluster: str, ref: str) -> str:
        """The name registry mode pushes `ref` under for `cluster`'s registry."""
        target = registry.local_target(cluster, self.clusters[cluster], self.registry_image)
        return registry.pushed_name(target, LocalImage(ref, containerd_name(ref), "", (), 0))


def received(members: list[str]) -> int:
    """Bytes the nodes' network interfaces have received (all but loopback)."""
    total = 0
    for node in members:
        for line in nodes.docker("exec", node, "busybox", "cat", "/proc/net/dev").splitlines():
            name, sep, counters = line.partition(":")
            if sep and name.strip() != "lo" and counters.split():
                total += int(counters.split()[0])
    return total


def run(
    sets: list[ImageSet], work: Path, modes: list[str], repeats: int, channel: bench.Channel
) -> list[ModeRow]:
    """Every step for every set in each of `modes`; removes what it made."""
    rows: list[ModeRow] = []
    with Bench(work, channel) as b:
        for s in sets:
            rows += run_set(b, s, modes, repeats)
    return rows


def run_set(b: Bench, s: ImageSet, modes: list[str], repeats: int) -> list[ModeRow]:
    rows: list[ModeRow] = []

    def add(mode: str, step: str, measured: tuple[float, int, int, float], note: str) -> None:
        seconds, pushed, sent, rss = measured
        rows.append(ModeRow(s.name, step, seconds, sent, rss, note, mode=mode, pushed=pushed))

    def kind_way(node: str, refs: list[str]) -> tuple[float, int, int, float]:
        bench.settle()
        seconds, size = bench.kind_load(refs, node, b.work)
        return seconds, 0, size, 0.0

    def alternate(r: int) -> list[str]:
        return modes if r % 2 == 0 else modes[::-1]

    held: dict[str, str] = {}  # mode -> the cluster holding the set
    kind_cluster = ""
    for r in range(repeats):  # B beside A, the modes' order alternating
        for cluster in (*held.values(), kind_cluster):
            if cluster:
                b.drop(cluster)
        kind_cluster, (kind_node,) = b.cluster("kind")
        add("kind", "A", kind_way(kind_node, s.refs), "kind's way: save to a temp tar, import")
        for mode in alternate(r):
            held[mode], _ = b.cluster(mode)
            bench.settle()
            add(mode, "B", b.load(mode, held[mode], s.refs), "fresh node")

    for mode in modes:
        bench.settle()
        add(mode, "C", b.load(mode, held[mode], s.refs), "again, everything present")

    ref, base, top = s.rebuild
    short = ref.rsplit("/", 1)[-1]
    for r in range(repeats):
        replaced = bench.image_id(ref)
        bench.build(ref, {"top": top}, b.work, base=base)
        for mode in alternate(r):
            bench.settle()
            note = f"{short} rebuilt with a new {top // MiB} MiB top layer"
            add(mode, "D", b.load(mode, held[mode], s.refs), note)
        add("kind", "AD", kind_way(kind_node, [ref]), "kind's way for that image alone")
        subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)

    if "registry" in modes:  # one more rebuild, split into what each mode pays first
        replaced = bench.image_id(ref)
        bench.build(ref, {"top": top}, b.work, base=base)
        bench.settle()
        seconds, size = bench.saved([ref])
        note = f"`docker save` of it ({size / MiB:.0f} MiB), discarded"
        rows.append(ModeRow(s.name, "DX", seconds, 0, note=note, mode="stream"))
        bench.settle()
        name = b.pushed_name(held["registry"], ref)
        start = time.monotonic()
        nodes.docker("tag", ref, name)
        nodes.docker("push", name)
        note = "`docker tag` + `docker push` of it alone"
        rows.append(ModeRow(s.name, "DP", time.monotonic() - start, 0, note=note, mode="registry"))
        bench.settle()
        note = "the loader after that push: checks and pulls"
        add("registry", "DL", b.load("registry", held["registry"], s.refs), note)
        subprocess.run(["docker", "rmi", replaced], capture_output=True, check=False)

    for cluster in (*held.values(), kind_cluster):
        b.drop(cluster)
    for r in range(repeats):  # two nodes: first load into both
        for mode in alternate(r):
            cluster, _ = b.cluster(f"{mode}2", workers=1)
            bench.settle()
            add(mode, "B2", b.load(mode, cluster, s.refs), "fresh 2-node cluster")
            b.drop(cluster)
    return rows


def fastest(rows: list[ModeRow]) -> dict[tuple[str, str, str], ModeRow]:
    """Each (mode, set, step)'s fastest row: of repeated steps, the least disturbed run."""
    by: dict[tuple[str, str, str], ModeRow] = {}
    for r in rows:
        key = (r.mode, r.set, r.step)
        if key not in by or r.seconds < by[key].seconds:
            by[key] = r
    return by


def table(rows: list[ModeRow]) -> str:
    lines = [
        "| mode | set | step | seconds | pushed | into the nodes | loader peak RSS | what |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rss = f"{r.rss_mib:.0f} MiB" if r.rss_mib else ""
        pushed = f"{r.pushed / MiB:.1f} MiB" if r.mode == "registry" and r.step != "DP" else ""
        lines.append(
            f"| {r.mode} | {r.set} | {r.step} | {r.seconds:.1f} | {pushed} |"
            f" {r.sent / MiB:.1f} MiB | {rss} | {r.note} |"
        )
    return "\n".join(lines)


def summary(rows: list[ModeRow], changed: dict[str, int]) -> str:
    """Per set: each mode's fastest figures, B/A and D/AD per mode, and registry/stream."""
    by = fastest(rows)
    present = [m for m in MODES if any(r.mode == m and r.step == "B" for r in rows)]
    both = present == list(MODES)
    lines = [
        "| set | figure | " + " | ".join(present) + (" | registry/stream |" if both else " |"),
        "|---|---|" + "---:|" * (len(present) + both),
    ]
    notes = []
    for name in sorted({r.set for r in rows}):
        lines += _set_lines(by, name, present)
        a, ad = by[("kind", name, "A")], by[("kind", name, "AD")]
        notes.append(
            f"set {name}: kind's way A {a.seconds:.1f} s, AD {ad.seconds:.1f} s;"
            f" changed layer {changed[name] / MiB:.0f} MiB"
        )
        if "registry" in present:
            pushed = [by[("registry", name, s)].pushed / MiB for s in ("B", "C", "D", "B2")]
            dx = by[("stream", name, "DX")]
            dp, dl = by[("registry", name, "DP")], by[("registry", name, "DL")]
            notes.append(
                f"set {name}: registry pushed B / C / D / B2 "
                + " / ".join(f"{x:.1f}" for x in pushed)
                + f" MiB; floors DX (save) {dx.seconds:.1f} s, DP (push) {dp.seconds:.1f} s,"
                f" DL (loader after that push) {dl.seconds:.1f} s"
            )
    return "\n".join([*lines, "", *notes])


def _set_lines(by: dict[tuple[str, str, str], ModeRow], name: str, present: list[str]) -> list[str]:
    a, ad = by[("kind", name, "A")], by[("kind", name, "AD")]
    lines = []

    def line(figure: str, values: list[float], fmt: str) -> None:
        cells = [format(v, fmt) for v in values]
        if len(present) == len(MODES):
            cells.append(f"{values[1] / values[0]:.2f}" if values[0] else "")
        lines.append(f"| {name} | {figure} | " + " | ".join(cells) + " |")

    def of(step: str) -> list[ModeRow]:
        return [by[(m, name, step)] for m in present]

    line("B first load, s", [r.seconds for r in of("B")], ".1f")
    line("C re-run, s", [r.seconds for r in of("C")], ".2f")
    line("D one rebuilt layer, s", [r.seconds for r in of("D")], ".1f")
    line("B2 first load, 2 nodes, s", [r.seconds for r in of("B2")], ".1f")
    line("B/A (A: kind's way, fresh node)", [r.seconds / a.seconds for r in of("B")], ".2f")
    line("D/AD (AD: kind's way, that image)", [r.seconds / ad.seconds for r in of("D")], ".2f")
    line("B2/B", [r2.seconds / r.seconds for r2, r in zip(of("B2"), of("B"), strict=True)], ".2f")
    for step in ("B", "C", "D", "B2"):
        line(f"{step} into the nodes, MiB", [r.sent / MiB for r in of(step)], ".1f")
    return lines
