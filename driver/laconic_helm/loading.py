"""`images load`: the images step on its own (stream or registry mode), for any kind cluster.

Apart from commands.py, which imports every step's modules (the spec models, helm, the
Kubernetes client): this command needs none of them, and a re-run with everything present
should cost little more than the interpreter's start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from laconic_helm import images, lock

if TYPE_CHECKING:
    from collections.abc import Sequence

    from laconic_helm.output import Reporter


async def load_images(
    cluster_name: str, refs: Sequence[str], reporter: Reporter, *, lock_wait: float
) -> dict[str, Any]:
    """Loads `refs` into the cluster's nodes under its lock (a load in progress protects its
    half-sent layers from containerd's garbage collector)."""
    async with lock.deployment_lock(cluster_name, wait=lock_wait):
        found, nodes = await images.check_inputs(cluster_name, refs)
        with reporter.step(f"images into {cluster_name}") as rec:
            planned = images.plan_images(found, nodes)
            results = await images.apply_images(found, nodes, planned, reporter)
            for result in results:
                reporter.line(result.line())
            rec.done("changed" if planned else "ok", images.summary(results))
    return {"images": [r.as_dict() for r in results]}


async def load_images_via_registry(
    cluster_name: str,
    refs: Sequence[str],
    reporter: Reporter,
    *,
    port: int,
    image: str,
    lock_wait: float,
) -> dict[str, Any]:
    """`images load --via registry`: registry mode's step on its own, for any kind cluster
    whose nodes read registry host config, under the cluster's lock."""
    from laconic_helm import registry  # the pull-Secret parts bring the Kubernetes models

    async with lock.deployment_lock(cluster_name, wait=lock_wait):
        found, nodes = await images.check_inputs(cluster_name, refs)
        registry.check_local_images(found)
        target = registry.local_target(cluster_name, port, image)
        seen = await registry.observe(target, found, nodes)
        with reporter.step(f"images via {target.prefix}") as rec:
            planned = registry.plan(target, found, seen)
            results, _ = await registry.apply(target, found, seen, planned, reporter)
            for result in results:
                reporter.line(result.line())
            rec.done("changed" if planned else "ok", "; ".join(a.line() for a in planned))
    return {"images": [r.as_dict() for r in results]}
