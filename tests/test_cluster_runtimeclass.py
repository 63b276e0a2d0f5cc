"""Tests of cluster/runtimeclass.py: the RuntimeClass of the high-memlock runtime (`unit`)."""

from __future__ import annotations

import pytest

from laconic_helm.cluster import runtimeclass
from laconic_helm.cluster.memlock import memlock_containerd_patch
from laconic_helm.errors import ClusterError
from tests.cluster_support import make_cluster


@pytest.mark.unit
def test_runtime_class_names_the_containerd_runtime() -> None:
    rc = runtimeclass.runtime_class_manifest()
    assert (rc["apiVersion"], rc["kind"]) == ("node.k8s.io/v1", "RuntimeClass")
    assert rc["metadata"]["name"] == rc["handler"] == "high-memlock"
    assert f"runtimes.{rc['handler']}]" in memlock_containerd_patch()


@pytest.mark.unit
def test_runtime_class_planned_only_when_asked_for_and_missing() -> None:
    wanted = make_cluster(highMemlock=True)
    (action,) = runtimeclass.plan_runtime_class(wanted, None)
    assert action.line() == "cluster: create-runtime-class high-memlock (handler high-memlock)"
    assert runtimeclass.plan_runtime_class(wanted, runtimeclass.runtime_class_manifest()) == []
    assert runtimeclass.plan_runtime_class(make_cluster(), None) == []
    other = {**runtimeclass.runtime_class_manifest(), "handler": "runc"}
    with pytest.raises(ClusterError, match="RuntimeClass high-memlock: handler 'runc'"):
        runtimeclass.plan_runtime_class(wanted, other)
