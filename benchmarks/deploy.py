"""The cost of a re-run: `laconic-helm deploy` on a deployment that is already converged.

Builds the harness's stand-in kind cluster (real containerd in the node, a real kube-apiserver),
deploys both releases once with real helm, then times whole `laconic-helm deploy` processes on
the unchanged spec, and counts what they changed: helm upgrades (new release revisions), API
writes (the API server's audit log) and image bytes sent into the node. The machine is shared:
the load average is printed with the figures.

    python benchmarks/deploy.py             # 5 re-runs with Helm 4, then 5 with Helm 3
    python benchmarks/deploy.py --runs 10 --helm helm
    python benchmarks/deploy.py --helm helm --kind   # the stand-in and real kind side by side

With --kind the same figures come from a real kind cluster too (the test Docker daemon and the
images scripts/provision-kind builds; tests/harness/e2e.py's node: Caddy and agave test mode).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "driver"))
os.environ["PATH"] = (
    f"{Path.home() / '.cache' / 'laconic-helm' / 'bin'}{os.pathsep}{os.environ['PATH']}"
)

from tests.harness import deployment_under_test as d  # noqa: E402


def _revisions(api: object) -> int:
    return len(d.release_secrets(api, d.CADDY_NAMESPACE, "caddy-ingress")) + len(
        d.release_secrets(api, d.AGAVE_NAMESPACE, "agave")
    )


def _reruns(
    dep: d.Deployment, api: object, cluster: str, runs: int, first_seconds: float
) -> dict[str, object]:
    """Times `runs` re-runs of the converged deployment and counts what they changed."""
    revisions = _revisions(api)
    walls, writes, sent, changed = [], 0, 0, 0
    steps: dict[str, list[float]] = {}
    for _ in range(runs):
        mark = api.mark()
        start = time.monotonic()
        again = dep.run("deploy")
        walls.append(time.monotonic() - start)
        if again.code != 0:
            raise SystemExit(f"re-run failed: {again.error}")
        writes += len(api.writes_since(mark))
        changed += bool(again.report["changed"])
        for step in again.report["steps"]:
            # Step names carry the cluster's name, which differs per run.
            name = step["name"].replace(f" {cluster}", "").replace(" into", "")
            steps.setdefault(f"step {name}", []).append(step["seconds"])
            for image in step["data"].get("images", []):
                sent += image["bytes_sent"]
    return {
        "first_deploy_s": round(first_seconds, 1),
        "rerun_median_s": round(statistics.median(walls), 2),
        "rerun_min_s": round(min(walls), 2),
        "rerun_max_s": round(max(walls), 2),
        "runs": runs,
        "reruns_reporting_changed": changed,
        "helm_upgrades": _revisions(api) - revisions,
        "api_writes": writes,
        "image_bytes_sent": sent,
        **{name: round(statistics.median(s), 2) for name, s in steps.items()},
    }


def measure(helm: str, runs: int, workdir: Path) -> dict[str, object]:
    """On the stand-in cluster: the harness's chart images, a kubelet stand-in."""
    with (
        d.standin_kind(workdir) as kind,
        d.chart_images() as images,
        d.ledger_volumes(),
        kind.kubelets(),
    ):
        cluster = kind.new_name("bench")
        files = d.make_files(workdir / "files", "bench")
        spec = d.write_spec(workdir, d.full_spec(workdir, cluster, images, files))
        dep = d.Deployment(spec, cluster, d.driver_env(kind, workdir / "state", helm))
        start = time.monotonic()
        first = dep.run("deploy")
        first_seconds = time.monotonic() - start
        if first.code != 0:
            raise SystemExit(f"first deploy failed: {first.error}")
        return {
            "cluster": f"stand-in, {Path(helm).name}",
            **_reruns(dep, kind.api(cluster), cluster, runs, first_seconds),
        }


def measure_kind(runs: int, workdir: Path) -> dict[str, object]:
    """On real kind (the test daemon, the node image and test images scripts/provision-kind
    built): the end-to-end tests' node, deployed from no cluster by the real CLI with Helm 4."""
    from tests.harness import e2e, realkind

    why = realkind.missing()
    if why is not None:
        raise SystemExit(f"real kind cannot run here: {why}")
    node = e2e.make(workdir, f"bench-{os.getpid()}-deploy")
    try:
        start = time.monotonic()
        first = node.deployment.run("deploy", timeout=900)
        first_seconds = time.monotonic() - start
        if first.code != 0:
            raise SystemExit(f"first deploy failed: {first.error}")
        return {
            "cluster": "real kind, helm",
            **_reruns(node.deployment, node.api(), node.cluster, runs, first_seconds),
        }
    finally:
        e2e.delete_cluster(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--helm", action="append", help="helm binaries (default: helm, helm3)")
    parser.add_argument(
        "--kind", action="store_true", help="also on a real kind cluster (Helm 4), side by side"
    )
    args = parser.parse_args()
    rows = []
    for helm in args.helm or ["helm", "helm3"]:
        path = shutil.which(helm)
        if path is None:
            raise SystemExit(f"{helm} not found (run scripts/provision-tools)")
        with tempfile.TemporaryDirectory(prefix="laconic-helm-bench-") as tmp:
            rows.append(measure(path, args.runs, Path(tmp)))
    if args.kind:
        with tempfile.TemporaryDirectory(prefix="laconic-helm-bench-") as tmp:
            rows.append(measure_kind(args.runs, Path(tmp)))
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("  ".join(f"{k:>24}" for k in ["figure", *(str(r["cluster"]) for r in rows)]))
    for key in keys[1:]:
        print("  ".join(f"{v!s:>24}" for v in [key, *(r.get(key, "-") for r in rows)]))


if __name__ == "__main__":
    main()
