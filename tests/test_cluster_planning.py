"""Tests of cluster/planning.py: how a cluster differs from the spec, and what is planned for
it, on made-up observations (`unit`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from laconic_helm.cluster import planning
from laconic_helm.cluster.nodes import BindMount, PortBinding
from laconic_helm.cluster.observe import ClusterState, stopped_problem
from laconic_helm.errors import UserError
from tests.cluster_support import make_cluster, make_node, make_record, verbs

# -- differences ----------------------------------------------------------------------------

API = PortBinding(6443, "TCP", "127.0.0.1", 41234)


def fitting_state(**node: Any) -> ClusterState:
    base = {
        "ports": (PortBinding(80, "TCP", "0.0.0.0", 80), API),
        "mounts": (BindMount("/srv/kind", "/mnt", False, "HostToContainer"),),
    }
    base.update(node)
    return ClusterState(
        "lh",
        nodes=(make_node(**base),),
        record=make_record(),
        owned=True,
        ownership="laconic-helm created it",
        api_ready=True,
        node_labels={"ingress-ready": "true", "kubernetes.io/os": "linux"},
    )


FITTING_SPEC = {
    "ports": [{"containerPort": 80, "hostPort": 80}],
    "mounts": [
        {"hostPath": "/srv/kind", "containerPath": "/mnt", "propagation": "HostToContainer"}
    ],
}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec_changes", "state_changes", "expected"),
    [
        ({}, {}, []),
        ({"ports": [*FITTING_SPEC["ports"], {"containerPort": 443, "hostPort": 443}]}, {},
         ["host port 443/TCP is not published (spec: 0.0.0.0:443 -> node port 443)"]),
        ({"ports": [{"containerPort": 80, "hostPort": 80, "listenAddress": "127.0.0.1"}]}, {},
         ["host port 80/TCP is published as 0.0.0.0:80 -> node port 80; "
          "spec: 127.0.0.1:80 -> node port 80"]),
        ({"ports": []}, {},
         ["host port 80/TCP is published (0.0.0.0:80 -> node port 80) but not in the spec"]),
        ({"mounts": []}, {}, []),
        ({"mounts": [{"hostPath": "/srv/other", "containerPath": "/mnt",
                      "propagation": "HostToContainer"}]}, {},
         ["mount /mnt comes from /srv/kind, the spec asks for /srv/other"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/data"}]}, {},
         ["mount /data is absent (spec: /srv/kind)"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/mnt", "readOnly": True,
                      "propagation": "HostToContainer"}]}, {},
         ["mount /mnt is writable, the spec asks for the opposite"]),
        ({"mounts": [{"hostPath": "/srv/kind", "containerPath": "/mnt"}]}, {},
         ["mount /mnt has propagation HostToContainer, the spec asks for None"]),
        ({"nodeImage": "kindest/node:v1.36.0"}, {},
         ["node image is kindest/node:v1.35.0, the spec asks for kindest/node:v1.36.0"]),
        ({"nodeImage": "kindest/node:v1.35.0"}, {}, []),
        ({"highMemlock": True}, {"memlock_runtime": False},
         ["the containerd runtime high-memlock is not configured in the node"]),
        ({"highMemlock": True}, {"memlock_runtime": True}, []),
        ({"nodeLabels": {"ingress-ready": "true", "tier": "rpc"}}, {},
         ["node label tier=rpc is missing"]),
        ({"nodeLabels": {"ingress-ready": "false"}}, {},
         ["node label ingress-ready is 'true', the spec asks for 'false'"]),
        ({"nodeLabels": {"tier": "rpc"}}, {"node_labels": None}, []),
    ],
)  # fmt: skip
def test_differences(
    spec_changes: dict[str, Any], state_changes: dict[str, Any], expected: list[str]
) -> None:
    spec = make_cluster(**{**FITTING_SPEC, **spec_changes})
    state = replace(fitting_state(), **state_changes)
    assert planning.differences(spec, state) == expected


@pytest.mark.unit
def test_a_spec_that_maps_the_api_port_itself_is_compared_too() -> None:
    spec = make_cluster(
        ports=[{"containerPort": 6443, "hostPort": 41234, "listenAddress": "127.0.0.1"}]
    )
    assert planning.differences(spec, fitting_state(ports=(API,))) == []


# -- planning -------------------------------------------------------------------------------


STOPPED = make_node(status="exited")
ABSENT = ClusterState("lh", ownership="absent")


def state_of(**changes: Any) -> ClusterState:
    """A fitting state with changes; `ports`/`mounts` change its control-plane node."""
    node = {k: changes.pop(k) for k in ("ports", "mounts") if k in changes}
    return replace(fitting_state(**node), **changes)


NOT_OURS = {"owned": False, "record": None, "ownership": "laconic-helm has no record of it"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "flags", "expected"),
    [
        (ABSENT, {}, [("create-cluster", "lh")]),
        (replace(ABSENT, record=make_record()), {}, [("create-cluster", "lh")]),
        (state_of(), {}, []),
        (state_of(), {"recreate": True}, []),
        (state_of(record=make_record("creating", ()),
                  problems=("laconic-helm's create of it never finished",)), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(problems=("its API does not answer: refused",)), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(nodes=(STOPPED,), problems=(stopped_problem(STOPPED),)), {},
         [("start-node", "lh-control-plane")]),
        (state_of(record=make_record("creating", ()), nodes=(STOPPED,),
                  problems=("laconic-helm's create of it never finished",
                            stopped_problem(STOPPED))), {},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS), {}, []),
        (state_of(**NOT_OURS), {"adopt": True}, [("adopt-cluster", "lh")]),
        (state_of(**NOT_OURS, problems=("its API does not answer: refused",)), {"adopt": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS, nodes=(STOPPED,), problems=(stopped_problem(STOPPED),)),
         {"adopt": True}, [("adopt-cluster", "lh"), ("start-node", "lh-control-plane")]),
        (state_of(ports=(API,)), {"recreate": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
        (state_of(**NOT_OURS, ports=(API,)), {"recreate": True, "adopt": True},
         [("delete-cluster", "lh"), ("create-cluster", "lh")]),
    ],
)  # fmt: skip
def test_plan(state: ClusterState, flags: dict[str, bool], expected: list[tuple[str, str]]) -> None:
    spec = make_cluster(**FITTING_SPEC)
    assert verbs(planning.plan_cluster(spec, state, **flags)) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "flags", "words"),
    [
        # Ours but differs: fixed at creation, rebuilt only on request.
        (state_of(ports=(API,)), {},
         "cluster lh: differs from the spec (host port 80/TCP is not published (spec: "
         "0.0.0.0:80 -> node port 80)); these are fixed when a kind cluster is created"),
        # Not ours and differs: a name clash; recreate alone is not enough.
        (state_of(**NOT_OURS, ports=(API,)), {"recreate": True},
         "cluster lh: differs from the spec (host port 80/TCP is not published"),
        (state_of(**NOT_OURS, problems=("node lh-control-plane is exited, not running",)), {},
         "cluster lh: exists but is not healthy (node lh-control-plane is exited, not running) "
         "and laconic-helm has no record of it, so laconic-helm leaves it alone"),
    ],
)  # fmt: skip
def test_plan_refuses(state: ClusterState, flags: dict[str, bool], words: str) -> None:
    spec = make_cluster(**FITTING_SPEC)
    with pytest.raises(UserError) as caught:
        planning.plan_cluster(spec, state, **flags)
    assert caught.value.exit_code == 2
    assert words in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.unit
def test_plan_refusal_hints_at_the_flags() -> None:
    spec = make_cluster(**FITTING_SPEC)
    with pytest.raises(UserError) as ours:
        planning.plan_cluster(spec, state_of(ports=(API,)))
    assert "--recreate-cluster" in (ours.value.hint or "")
    with pytest.raises(UserError) as theirs:
        planning.plan_cluster(spec, state_of(**NOT_OURS, ports=(API,)))
    assert "--adopt-cluster" in (theirs.value.hint or "")


@pytest.mark.unit
def test_existing_provider_plans_nothing() -> None:
    spec = make_cluster(provider="existing", context="prod")
    assert planning.plan_cluster(spec, ClusterState("lh", "existing")) == []


@pytest.mark.unit
def test_plan_delete() -> None:
    spec = make_cluster()
    assert planning.plan_delete_cluster(spec, ABSENT) == []
    assert verbs(planning.plan_delete_cluster(spec, state_of())) == [("delete-cluster", "lh")]
    with pytest.raises(UserError, match="will not delete it"):
        planning.plan_delete_cluster(spec, state_of(**NOT_OURS))
    adopted = state_of(record=make_record("adopted"))
    assert verbs(planning.plan_delete_cluster(spec, adopted)) == [("delete-cluster", "lh")]
    with pytest.raises(UserError, match="never deletes"):
        planning.plan_delete_cluster(make_cluster(provider="existing", context="x"), ABSENT)
