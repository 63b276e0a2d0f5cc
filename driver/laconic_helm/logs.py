"""`logs`: a release's pod logs, found by the release label, as the API streams them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from laconic_helm import cluster
from laconic_helm.errors import UserError
from laconic_helm.kube import Kube, LogQuery

if TYPE_CHECKING:
    from laconic_helm.spec import Release, Spec


def pick_release(spec: Spec, name: str | None) -> Release:
    """The named release, or the spec's last one (the app; Caddy comes first)."""
    if not spec.releases:
        raise UserError(f"{spec.source or 'the spec'}: has no releases")
    if name is None:
        return spec.releases[-1]
    for release in spec.releases:
        if release.name == name:
            return release
    known = ", ".join(r.name for r in spec.releases)
    raise UserError(f"--release: no release {name!r} in the spec (it has: {known})")


async def pod_logs(
    spec: Spec,
    release_name: str | None,
    *,
    query: LogQuery,
    emit: Callable[[str, str], None],
) -> dict[str, Any]:
    """Sends each log line of the release's pods to `emit(pod, line)`; follows if asked."""
    release = pick_release(spec, release_name)
    state = await cluster.observe_cluster(spec.cluster)
    if state.problems or (spec.cluster.provider == "kind" and not state.exists):
        problem = state.problems[0] if state.problems else "it does not exist"
        raise UserError(f"cluster {spec.cluster.name}: {problem}")
    access = await cluster.ensure_kubeconfig(spec.cluster, state)
    kube = Kube.connect(access.kubeconfig, access.context)
    selector = f"app.kubernetes.io/instance={release.name}"
    pods = await kube.list_pods(release.namespace, selector)
    if not pods:
        raise UserError(f"release {release.name}: no pods in namespace {release.namespace}")
    loop = asyncio.get_running_loop()
    lock = threading.Lock()

    def settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
        if future.done():
            return  # cancelled meanwhile (Ctrl-C while following)
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def read(pod: str, container: str, future: asyncio.Future[int]) -> None:
        count = 0
        try:
            lines = kube.pod_log_lines(release.namespace, pod, container=container, query=query)
            for line in lines:
                with lock:
                    emit(pod, line)
                count += 1
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, future, exc)
            return
        loop.call_soon_threadsafe(settle, future, count)

    futures = []
    for pod in pods:
        for container in pod["spec"]["containers"]:
            future: asyncio.Future[int] = loop.create_future()
            # Daemon threads: a stream blocked on a quiet pod must not hold the exit back.
            threading.Thread(
                target=read,
                args=(pod["metadata"]["name"], container["name"], future),
                daemon=True,
            ).start()
            futures.append(future)
    counts = await asyncio.gather(*futures)
    return {"release": release.name, "pods": [p["metadata"]["name"] for p in pods],
            "lines": sum(counts)}  # fmt: skip
