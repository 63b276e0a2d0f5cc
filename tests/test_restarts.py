"""Restart windows: the policy a release's values give (unit, over the real agave chart's
defaults), which workloads an upgrade restarts (unit), where `plan` puts the wait (unit), the
wait's limits over a scripted exec (unit), and the decision over the stand-in API with real
helm and a running rpc-mode pod. The wait itself, through the node's own `agave-validator`,
runs on real kind in tests/test_e2e.py."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm import kube, releases, restarts, spec
from laconic_helm.desired import desired_release
from laconic_helm.errors import EXIT_PARTIAL, DeadlineExceeded, ReleaseError
from laconic_helm.helm import connect as helm_connect
from laconic_helm.releases import DesiredRelease, ReleaseState, Revision
from laconic_helm.restarts import RunningNode, WindowPolicy
from tests.harness.deployment_under_test import keypair_bytes

AGAVE = Path(__file__).resolve().parent.parent / "charts" / "agave"
POLICY = WindowPolicy(
    min_idle_time=10, max_delinquent_stake=5, skip_new_snapshot_check=False, timeout=3600
)
NODE = RunningNode("agave", "agave-7d9f-abcde", "Deployment/agave")


def _agave(values: dict[str, Any]) -> DesiredRelease:
    release = spec.Release(name="agave", chart=str(AGAVE), namespace="agave", values=values)
    return desired_release(release)


# -- the policy -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, None),
        ({"mode": "test"}, None),
        ({"mode": "rpc"}, POLICY),
        ({"mode": "validator"}, POLICY),
        ({"mode": "rpc", "restartWindow": {"enabled": False}}, None),
        (
            {
                "mode": "validator",
                "restartWindow": {
                    "minIdleTime": 30,
                    "maxDelinquentStake": 3,
                    "skipNewSnapshotCheck": True,
                    "timeout": 600,
                },
            },
            WindowPolicy(30, 3, True, 600),
        ),
    ],
    ids=["chart-default-test-mode", "test", "rpc", "validator", "turned-off", "tuned"],
)
def test_the_agave_charts_values_give_the_restart_window(
    values: dict[str, Any], expected: WindowPolicy | None
) -> None:
    """Over the chart's own defaults: test mode never waits, rpc and validator do."""
    assert _agave(values).restart_window == expected


@pytest.mark.unit
def test_the_wait_runs_agaves_own_command_with_the_policy() -> None:
    assert WindowPolicy(15, 4, True, 60).argv == [
        "agave-validator", "--ledger", "/data/ledger", "wait-for-restart-window",
        "--min-idle-time", "15", "--max-delinquent-stake", "4", "--skip-new-snapshot-check",
    ]  # fmt: skip
    assert "--skip-new-snapshot-check" not in POLICY.argv


# -- which workloads restart ------------------------------------------------------------------


def _deployment(name: str, image: str = "agave:1", annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "agave", "image": image}]},
            },
        },
    }


def _manifest(*docs: dict) -> str:
    return "---\n" + "---\n".join(yaml.safe_dump(d) for d in docs)


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "agave"}, "spec": {}}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rendered", "restarted"),
    [
        ([_deployment("agave"), SERVICE], []),
        ([_deployment("agave", image="agave:2"), SERVICE], ["Deployment/agave"]),
        ([_deployment("agave", annotations={"laconic-helm/digest": "x"})], ["Deployment/agave"]),
        ([_deployment("agave"), _deployment("sidecar", image="new")], []),
        ([{**SERVICE, "spec": {"type": "NodePort"}}], []),
    ],
    ids=["same-template", "new-image", "pod-annotation", "new-workload", "service-only"],
)
def test_an_upgrade_restarts_the_workloads_whose_pod_template_changes(
    rendered: list[dict], restarted: list[str]
) -> None:
    deployed = _manifest(_deployment("agave"), SERVICE)
    assert sorted(restarts.restarted_workloads(deployed, rendered)) == restarted


# -- where the plan puts the wait -------------------------------------------------------------


def _state(*, digest: str = "sha256:old", restarting: tuple[RunningNode, ...] = ()) -> ReleaseState:
    revision = Revision(3, "deployed", digest=digest)
    return ReleaseState("agave", "agave", True, (revision,), restarting=restarting)


def _desired(policy: WindowPolicy | None) -> DesiredRelease:
    return DesiredRelease("agave", "agave", AGAVE, {}, "sha256:new", restart_window=policy)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("policy", "state", "flag", "verbs"),
    [
        (POLICY, _state(restarting=(NODE,)), True, ["wait-restart-window", "upgrade-release"]),
        (POLICY, _state(restarting=(NODE,)), False, ["upgrade-release"]),
        (None, _state(restarting=(NODE,)), True, ["upgrade-release"]),
        (POLICY, _state(), True, ["upgrade-release"]),
        (POLICY, _state(digest="sha256:new", restarting=(NODE,)), True, ["up-to-date"]),
    ],
    ids=["serving-node", "no-restart-window", "no-policy", "no-serving-pod", "up-to-date"],
)
def test_the_plan_waits_before_an_upgrade_that_restarts_a_serving_node(
    policy: WindowPolicy | None, state: ReleaseState, flag: bool, verbs: list[str]
) -> None:
    actions = releases.plan_release(_desired(policy), state, restart_window=flag)
    assert [a.verb for a in actions] == verbs
    if "wait-restart-window" in verbs:
        assert actions[0].target == "agave/agave-7d9f-abcde"
        assert "10 min idle" in actions[0].detail and "5% stake" in actions[0].detail


# -- the wait's limits, over a scripted exec --------------------------------------------------


class _ScriptedNode:
    """The one call wait_for_window makes, answering as agave's command would: `lines` one a
    `pace` seconds, then `code` (None: never ends)."""

    def __init__(self, lines: list[str], code: int | None, pace: float = 0.01) -> None:
        self.lines, self.code, self.pace = lines, code, pace
        self.argv: list[str] = []

    async def exec_lines(
        self, namespace: str, pod: str, container: str, argv: list[str], on_line: Callable
    ) -> int:
        self.argv = argv
        for line in self.lines:
            on_line(line)
            await asyncio.sleep(self.pace)
        if self.code is None:
            await asyncio.sleep(3600)
        return self.code or 0


def _wait(
    node: _ScriptedNode, policy: WindowPolicy, deadline: float | None = None
) -> tuple[float, list[str]]:
    said: list[str] = []
    waited = asyncio.run(
        restarts.wait_for_window(
            node,
            "agave",
            NODE,
            policy,
            deadline=deadline,
            progress=said.append,  # type: ignore[arg-type]
        )
    )
    return waited, said


@pytest.mark.unit
def test_the_wait_relays_agaves_progress_at_a_readable_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(restarts, "PROGRESS_EVERY", 0.05)
    lines = [f"waiting for a restart window: next leader slot in {n} s" for n in range(20, 0, -1)]
    node = _ScriptedNode(lines, 0)
    waited, said = _wait(node, POLICY)
    assert node.argv == POLICY.argv
    assert said[0].startswith(
        "  waiting for a restart window of agave/agave-7d9f-abcde: 10 min idle"
    )
    relayed = [s for s in said[1:-1] if "next leader slot" in s]
    assert 1 <= len(relayed) < len(lines)  # some, not every line
    assert said[-1].startswith("  agave-7d9f-abcde: restart window open after")
    assert waited >= 0.2


@pytest.mark.unit
def test_no_window_within_the_timeout_stops_with_exit_3() -> None:
    with pytest.raises(
        DeadlineExceeded, match=r"restartWindow\.timeout \(1 s\).*--no-restart-window"
    ) as stop:
        _wait(_ScriptedNode(["next leader slot in 99 s"], None), WindowPolicy(10, 5, False, 1))
    assert stop.value.exit_code == EXIT_PARTIAL


@pytest.mark.unit
def test_the_runs_deadline_bounds_the_wait() -> None:
    started = time.monotonic()
    deadline = started + 12.5  # the helm grace (10 s) and one more are left for the rest
    with pytest.raises(DeadlineExceeded, match="within the run's --deadline"):
        _wait(_ScriptedNode([], None), POLICY, deadline=deadline)
    assert time.monotonic() - started < 5


@pytest.mark.unit
def test_a_failing_wait_names_the_pod_the_last_line_and_the_way_out() -> None:
    node = _ScriptedNode(["Error: admin rpc: connection refused"], 1)
    with pytest.raises(ReleaseError) as failed:
        _wait(node, POLICY)
    assert (
        "pod agave/agave-7d9f-abcde failed (exit 1): Error: admin rpc: connection refused"
        in str(failed.value)
    )
    assert failed.value.hint is not None and "--no-restart-window" in failed.value.hint


# -- the decision over the stand-in API -------------------------------------------------------


@pytest.mark.apiserver
@pytest.mark.helm
@pytest.mark.standin_only(
    "pods are reported running by the kubelet stand-in; kind's run in test_e2e"
)
def test_the_stand_in_plan_waits_only_for_a_serving_rpc_node(
    kube_api: Any, kubelet: Any, helm_bin: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    ns = f"rw-{suffix}"
    k = kube.Kube.connect(kube_api.kubeconfig, kube_api.context)
    helm = asyncio.run(
        helm_connect(kubeconfig=kube_api.kubeconfig, context=kube_api.context, executable=helm_bin)
    )
    base = {
        "mode": "rpc",
        "identity": {"keypair": keypair_bytes(f"rw-{suffix}").decode()},
        "volumes": {v: {"type": "emptyDir"} for v in ("ledger", "accounts", "snapshots")},
    }

    def desired(values: dict[str, Any]) -> DesiredRelease:
        release = spec.Release(
            name="rw", chart=str(AGAVE), namespace=ns, values=values, wait=True, timeout=120
        )
        return desired_release(release)

    def planned(values: dict[str, Any], **kw: Any) -> list[Any]:
        want = desired(values)
        state = asyncio.run(releases.observe_release(k, helm, want))
        return releases.plan_release(want, state, **kw)

    try:
        first = asyncio.run(releases.ensure_release(k, helm, desired(base)))
        assert "wait-restart-window" not in [a.verb for a in first.actions]  # nothing ran yet
        (pod,) = asyncio.run(k.list_pods(ns, "app.kubernetes.io/instance=rw"))
        changed = copy.deepcopy(base) | {"podAnnotations": {"example.com/change": "1"}}

        waits = [a for a in planned(changed) if a.verb == "wait-restart-window"]
        assert [a.target for a in waits] == [f"{ns}/{pod['metadata']['name']}"]
        assert [a.verb for a in planned(changed, restart_window=False)][-1:] == ["upgrade-release"]
        assert "wait-restart-window" not in [a.verb for a in planned(changed, restart_window=False)]
        assert [a.verb for a in planned(base)] == ["up-to-date"]
        turned_off = changed | {"restartWindow": {"enabled": False}}
        assert "wait-restart-window" not in [a.verb for a in planned(turned_off)]
        test_mode = changed | {"mode": "test"}
        assert "wait-restart-window" not in [a.verb for a in planned(test_mode)]
    finally:
        asyncio.run(releases.ensure_release_absent(k, helm, "rw", ns, timeout=60))
        kube_api.delete_namespace(ns)
