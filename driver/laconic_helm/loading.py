"""`images load`: the images step on its own, for any kind cluster.

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
