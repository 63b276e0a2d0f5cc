"""The RuntimeClass by which pods choose the high-memlock runtime, made along with the cluster.

The node's containerd has the runtime from its creation on; the RuntimeClass is an API object,
so it is the one part of the runtime set up (and checked) through the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from laconic_helm.actions import Action
from laconic_helm.cluster.memlock import MEMLOCK_RUNTIME
from laconic_helm.cluster.planning import STEP
from laconic_helm.errors import ClusterError
from laconic_helm.kube import ObjectRef

if TYPE_CHECKING:
    from laconic_helm.kube import Kube
    from laconic_helm.spec import Cluster


def runtime_class_manifest() -> dict[str, Any]:
    """Returns the RuntimeClass that lets pods opt into the high-memlock runtime."""
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {
            "name": MEMLOCK_RUNTIME,
            "labels": {"app.kubernetes.io/managed-by": "laconic-helm"},
        },
        "handler": MEMLOCK_RUNTIME,
    }


def _runtime_class_ref() -> ObjectRef:
    return ObjectRef("node.k8s.io/v1", "RuntimeClass", MEMLOCK_RUNTIME, None)


async def observe_runtime_class(k: Kube) -> dict[str, Any] | None:
    """Returns the live high-memlock RuntimeClass, or None when there is none."""
    return await k.get_object(_runtime_class_ref())


def plan_runtime_class(cluster: Cluster, live: dict[str, Any] | None) -> list[Action]:
    """Pods ask for the high-memlock runtime by this RuntimeClass; the API refuses a pod that
    names one that does not exist. One with another handler would run them elsewhere: refused."""
    if not cluster.high_memlock:
        return []
    if live is None:
        return [Action(STEP, "create-runtime-class", MEMLOCK_RUNTIME, f"handler {MEMLOCK_RUNTIME}")]
    if live.get("handler") != MEMLOCK_RUNTIME:
        raise ClusterError(
            f"RuntimeClass {MEMLOCK_RUNTIME}: handler {live.get('handler')!r}, expected "
            f"{MEMLOCK_RUNTIME!r}; it was not made by this tool (a handler cannot be changed)"
        )
    return []


async def ensure_runtime_class(cluster: Cluster, k: Kube) -> list[Action]:
    """Creates the high-memlock RuntimeClass when the spec asks for the runtime and it is
    missing; a re-run only reads it."""
    if not cluster.high_memlock:
        return []
    actions = plan_runtime_class(cluster, await observe_runtime_class(k))
    if actions:
        await k.create_object(_runtime_class_ref(), runtime_class_manifest())
    return actions
