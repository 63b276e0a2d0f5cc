"""Restart windows: an upgrade that would restart a running rpc or validator node first waits,
through the node's own `agave-validator wait-for-restart-window`, for a moment when a restart
costs no leader slot and does not push the cluster's delinquent stake up.

The release's values say how (`mode`, `restartWindow.*`, over the chart's defaults); the pods
it would restart are those whose workload's pod template the upgrade changes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from laconic_helm.errors import DeadlineExceeded, ReleaseError
from laconic_helm.helm import STOP_GRACE

if TYPE_CHECKING:
    from laconic_helm.kube import Kube

WINDOW_MODES = frozenset({"rpc", "validator"})  # the modes whose restart has a cost
CONTAINER = "agave"  # the agave chart's node container
LEDGER = "/data/ledger"  # where the agave chart mounts the ledger (the admin socket is there)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
PROGRESS_EVERY = 5.0  # seconds between relayed progress lines


@dataclass(frozen=True)
class WindowPolicy:
    """What a restart waits for: agave's own criteria, and how long the driver waits at most."""

    min_idle_time: int  # minutes without a leader slot, before and after the restart
    max_delinquent_stake: int  # percent of stake delinquent at most
    skip_new_snapshot_check: bool
    timeout: int  # seconds

    @property
    def argv(self) -> list[str]:
        argv = [
            "agave-validator", "--ledger", LEDGER, "wait-for-restart-window",
            "--min-idle-time", str(self.min_idle_time),
            "--max-delinquent-stake", str(self.max_delinquent_stake),
        ]  # fmt: skip
        return [*argv, "--skip-new-snapshot-check"] if self.skip_new_snapshot_check else argv

    def describe(self) -> str:
        snapshot = ", new-snapshot check skipped" if self.skip_new_snapshot_check else ""
        return (
            f"{self.min_idle_time} min idle, at most {self.max_delinquent_stake}% stake "
            f"delinquent{snapshot}; waiting at most {self.timeout} s"
        )


def policy_of(values: Mapping[str, Any]) -> WindowPolicy | None:
    """The restart window a release's values (chart defaults merged in) ask for; None when its
    restarts cost nothing (test mode, another chart) or the window is turned off."""
    window = values.get("restartWindow")
    if values.get("mode") not in WINDOW_MODES or not isinstance(window, Mapping):
        return None
    if not window.get("enabled", True):
        return None
    return WindowPolicy(
        min_idle_time=int(window.get("minIdleTime", 10)),
        max_delinquent_stake=int(window.get("maxDelinquentStake", 5)),
        skip_new_snapshot_check=bool(window.get("skipNewSnapshotCheck", False)),
        timeout=int(window.get("timeout", 3600)),
    )


def _workloads(docs: Iterable[Any]) -> dict[str, Mapping[str, Any]]:
    """`Kind/name` -> object, for the objects that run pods."""
    return {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in docs
        if isinstance(d, Mapping) and d.get("kind") in WORKLOAD_KINDS
    }


def _template(workload: Mapping[str, Any]) -> Any:
    return (workload.get("spec") or {}).get("template")


def restarted_workloads(
    deployed_manifest: str, rendered: Iterable[Any]
) -> dict[str, Mapping[str, Any]]:
    """The workloads whose pod template the new rendering changes (so Kubernetes replaces
    their pods), each with its new object; workloads that are new restart nothing."""
    old = _workloads(yaml.safe_load_all(deployed_manifest))
    new = _workloads(rendered)
    return {n: d for n, d in new.items() if n in old and _template(old[n]) != _template(d)}


def _ready_node(pod: Mapping[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod.get("status") or {}).get("phase") == "Running" and any(
        s.get("name") == CONTAINER and s.get("ready") for s in statuses
    )


@dataclass(frozen=True)
class RunningNode:
    """A serving node pod that the upgrade would restart."""

    namespace: str
    pod: str
    workload: str

    @property
    def target(self) -> str:
        return f"{self.namespace}/{self.pod}"


async def observe_running(
    kube: Kube, namespace: str, deployed_manifest: str, rendered: Iterable[Any]
) -> tuple[RunningNode, ...]:
    """The ready node pods of the workloads the upgrade restarts. A pod that is not serving
    (starting, catching up, crashing) has no slots to lose: nothing waits for it."""
    found = []
    for workload, doc in restarted_workloads(deployed_manifest, rendered).items():
        labels = ((doc["spec"].get("selector") or {}).get("matchLabels")) or {}
        if not labels:
            continue
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        for pod in await kube.list_pods(namespace, selector):
            if _ready_node(pod):
                found.append(RunningNode(namespace, pod["metadata"]["name"], workload))
    return tuple(found)


async def wait_for_window(
    kube: Kube,
    release: str,
    node: RunningNode,
    policy: WindowPolicy,
    *,
    deadline: float | None,
    progress: Callable[[str], None],
) -> float:
    """Waits in the node's container until agave reports a restart window; returns the
    seconds waited. No window within the policy's timeout or the run's `deadline` (a
    time.monotonic() value) stops the run with exit 3, the release untouched."""
    started = time.monotonic()
    budget = float(policy.timeout)
    # Leave the run's own deadline guard (STOP_GRACE before it) its turn after this one.
    by_deadline = deadline is not None and deadline - started - STOP_GRACE - 1 < budget
    if deadline is not None:
        budget = min(budget, deadline - started - STOP_GRACE - 1)
    said = [started]
    seen: deque[str] = deque(maxlen=1)

    def relay(text: str) -> None:
        seen.append(text)
        now = time.monotonic()
        if now - said[0] >= PROGRESS_EVERY:
            said[0] = now
            progress(f"  {node.pod}: {text} ({now - started:.0f} s)")

    progress(f"  waiting for a restart window of {node.target}: {policy.describe()}")
    try:
        async with asyncio.timeout(max(budget, 0.0)):
            code = await kube.exec_lines(node.namespace, node.pod, CONTAINER, policy.argv, relay)
    except TimeoutError:
        limit = (
            "the run's --deadline" if by_deadline else f"restartWindow.timeout ({policy.timeout} s)"
        )
        raise DeadlineExceeded(
            f"release {release}: no restart window for pod {node.target} within {limit}; "
            "the release was not changed; re-run later, or pass --no-restart-window to restart "
            "it now"
        ) from None
    if code != 0:
        raise ReleaseError(
            release,
            f"waiting for a restart window in pod {node.target} failed (exit {code}): "
            f"{seen[-1] if seen else 'no output'}",
            hint="pass --no-restart-window to restart it without waiting",
        )
    waited = time.monotonic() - started
    progress(f"  {node.pod}: restart window open after {waited:.0f} s")
    return waited
