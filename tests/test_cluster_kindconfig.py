"""Tests of cluster/kindconfig.py: the kind config text a cluster is created from (`unit`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from laconic_helm import handoff
from laconic_helm.cluster import kindconfig
from laconic_helm.cluster.memlock import MEMLOCK_SPEC_IN_NODE
from tests.cluster_support import make_cluster


@pytest.mark.unit
def test_default_config_is_one_labelled_control_plane() -> None:
    text = kindconfig.render_kind_config(make_cluster())
    assert text == (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        "name: lh\n"
        "kubeadmConfigPatches:\n"
        "- |\n"
        "  kind: KubeletConfiguration\n"
        "  containerLogMaxSize: 200Mi\n"
        "  containerLogMaxFiles: 5\n"
        "containerdConfigPatches:\n"
        "- |\n"
        '  [plugins."io.containerd.grpc.v1.cri".registry]\n'
        '    config_path = "/etc/containerd/certs.d"\n'
        "nodes:\n"
        "- role: control-plane\n"
        "  labels:\n"
        "    ingress-ready: 'true'\n"
    )


@pytest.mark.unit
def test_container_log_rotation_comes_before_the_hosts_own_patches() -> None:
    spec = make_cluster(
        containerLogs={"maxSize": "1Gi", "maxFiles": 3},
        kindPatches={"kubeadm": [{"kind": "KubeletConfiguration", "failCgroupV1": False}]},
    )
    patches = yaml.safe_load(kindconfig.render_kind_config(spec))["kubeadmConfigPatches"]
    assert [yaml.safe_load(p) for p in patches] == [
        {"kind": "KubeletConfiguration", "containerLogMaxSize": "1Gi", "containerLogMaxFiles": 3},
        {"kind": "KubeletConfiguration", "failCgroupV1": False},
    ]


@pytest.mark.unit
def test_config_carries_ports_mounts_image_and_memlock(tmp_path: Path) -> None:
    spec = make_cluster(
        nodeImage="kindest/node:v1.35.0",
        ports=[
            {"containerPort": 80, "hostPort": 80},
            {"containerPort": 8001, "hostPort": 8001, "protocol": "UDP", "listenAddress": "::"},
        ],
        mounts=[
            {"hostPath": "/srv/kind", "containerPath": "/mnt", "propagation": "HostToContainer"}
        ],
        highMemlock=True,
    )
    memlock = tmp_path / "high-memlock-spec.json"
    transfer = tmp_path / "transfer"
    text = kindconfig.render_kind_config(spec, memlock_spec=memlock, transfer=transfer)
    doc = yaml.safe_load(text)
    node = doc["nodes"][0]
    assert node["image"] == "kindest/node:v1.35.0"
    assert node["extraPortMappings"] == [
        {"containerPort": 80, "hostPort": 80, "listenAddress": "0.0.0.0", "protocol": "TCP"},
        {"containerPort": 8001, "hostPort": 8001, "listenAddress": "::", "protocol": "UDP"},
    ]
    assert node["extraMounts"] == [
        {"hostPath": "/srv/kind", "containerPath": "/mnt", "readOnly": False,
         "propagation": "HostToContainer"},
        {"hostPath": str(memlock), "containerPath": MEMLOCK_SPEC_IN_NODE,
         "readOnly": True, "propagation": "None"},
        # image streams reach the node through a FIFO there; the node only reads
        {"hostPath": str(transfer), "containerPath": handoff.IN_NODE,
         "readOnly": True, "propagation": "None"},
    ]  # fmt: skip
    hosts, patch = doc["containerdConfigPatches"]
    assert hosts == kindconfig.REGISTRY_HOSTS_PATCH  # registry mode's host config, always
    assert ".runtimes.high-memlock]" in patch
    assert f'base_runtime_spec = "{MEMLOCK_SPEC_IN_NODE}"' in patch
    assert "SystemdCgroup = true" in patch


@pytest.mark.unit
def test_config_text_is_deterministic_whatever_the_label_order() -> None:
    a = make_cluster(nodeLabels={"b": "2", "a": "1"})
    b = make_cluster(nodeLabels={"a": "1", "b": "2"})
    assert kindconfig.render_kind_config(a) == kindconfig.render_kind_config(b)
    assert list(yaml.safe_load(kindconfig.render_kind_config(a))["nodes"][0]["labels"]) == [
        "a",
        "b",
    ]


@pytest.mark.unit
def test_memlock_needs_the_base_spec_file() -> None:
    with pytest.raises(ValueError, match="base spec"):
        kindconfig.kind_config(make_cluster(highMemlock=True))
