"""Kubernetes access: Helm's release record format, Secrets from files, ownership metadata."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from laconic_helm import kube
from laconic_helm.errors import ClusterError

RECORD = {
    "name": "caddy",
    "namespace": "caddy-system",
    "version": 3,
    "info": {"status": "pending-upgrade", "description": "Preparing upgrade"},
    "config": {"podAnnotations": {"a": "b"}},
    "manifest": "---\nkind: ConfigMap\n",
}


def _helm_secret(record: dict, *, gz: bool = True) -> dict:
    raw = json.dumps(record).encode()
    if gz:
        raw = gzip.compress(raw)
    return {"data": {"release": base64.b64encode(base64.b64encode(raw)).decode()}}


@pytest.mark.unit
def test_release_record_decodes_helms_double_base64_gzip_json() -> None:
    assert kube.decode_release(_helm_secret(RECORD)) == RECORD


@pytest.mark.unit
def test_release_record_without_gzip_still_decodes() -> None:
    assert kube.decode_release(_helm_secret(RECORD, gz=False)) == RECORD


@pytest.mark.unit
def test_encoded_release_record_reads_back_as_helm_stores_it() -> None:
    encoded = kube.encode_release(RECORD)
    inner = base64.b64decode(base64.b64decode(encoded))
    assert inner[:2] == b"\x1f\x8b"  # gzip, as helm writes it
    assert json.loads(gzip.decompress(inner)) == RECORD
    assert kube.decode_release({"data": {"release": encoded}}) == RECORD


def _live_secret(data: dict[str, bytes], *, labels: dict | None = None, kind: str = "Opaque"):
    return {
        "type": kind,
        "metadata": {"labels": {kube.MANAGED_BY: kube.DRIVER} if labels is None else labels},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


KEY = {"identity.json": b"[1,2,3]"}


@pytest.mark.unit
def test_secret_manifest_is_opaque_labelled_and_base64() -> None:
    manifest = kube.SecretData("agave", "validator-keys", KEY).manifest()
    assert manifest["type"] == "Opaque"
    assert manifest["metadata"] == {
        "name": "validator-keys",
        "namespace": "agave",
        "labels": {kube.MANAGED_BY: kube.DRIVER},
    }
    assert base64.b64decode(manifest["data"]["identity.json"]) == b"[1,2,3]"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("live", "matches"),
    [
        (_live_secret(KEY), True),
        (_live_secret({"identity.json": b"[9]"}), False),
        (_live_secret({**KEY, "extra": b"x"}), False),
        (_live_secret(KEY, labels={}), False),
        (_live_secret(KEY, kind="kubernetes.io/tls"), False),
    ],
    ids=["same", "other-bytes", "extra-key", "not-labelled", "other-type"],
)
def test_secret_matches_only_identical_managed_content(live: dict, matches: bool) -> None:
    assert kube.SecretData("agave", "validator-keys", KEY).matches(live) is matches


@pytest.mark.unit
def test_secret_bytes_never_appear_in_repr() -> None:
    secret = kube.SecretData("agave", "validator-keys", {"k": b"very-secret-bytes"})
    assert "very-secret" not in repr(secret)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("labels", "annotations", "ours", "elsewhere"),
    [
        ({}, {}, False, False),
        ({kube.MANAGED_BY: "Helm"}, {}, False, False),
        (
            {kube.MANAGED_BY: "Helm"},
            {kube.RELEASE_NAME: "caddy", kube.RELEASE_NAMESPACE: "caddy-system"},
            True,
            False,
        ),
        ({}, {kube.RELEASE_NAME: "caddy", kube.RELEASE_NAMESPACE: "caddy-system"}, False, False),
        (
            {kube.MANAGED_BY: "Helm"},
            {kube.RELEASE_NAME: "other", kube.RELEASE_NAMESPACE: "caddy-system"},
            False,
            True,
        ),
        (
            {kube.MANAGED_BY: "Helm"},
            {kube.RELEASE_NAME: "caddy", kube.RELEASE_NAMESPACE: "elsewhere"},
            False,
            True,
        ),
    ],
    ids=["bare", "label-only", "ours", "ours-no-label", "other-release", "other-namespace"],
)
def test_owner_tells_ours_from_another_release(
    labels: dict, annotations: dict, ours: bool, elsewhere: bool
) -> None:
    owner = kube.owner_of({"metadata": {"labels": labels, "annotations": annotations}})
    assert owner.is_release("caddy", "caddy-system") is ours
    assert owner.belongs_elsewhere("caddy", "caddy-system") is elsewhere


@pytest.mark.unit
def test_object_ref_names_kind_namespace_and_name() -> None:
    assert str(kube.ObjectRef("v1", "ServiceAccount", "sa", "ns")) == "ServiceAccount ns/sa"
    assert str(kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "cr")) == (
        "ClusterRole cr"
    )
    assert kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "cr").group == (
        "rbac.authorization.k8s.io"
    )
    assert kube.ObjectRef("v1", "ConfigMap", "c").group == ""


# -- against the stand-in API -------------------------------------------------------------------


@pytest.fixture
def k(kube_api: Any) -> kube.Kube:
    return kube.Kube.connect(kube_api.kubeconfig, kube_api.context)


@pytest.mark.apiserver
def test_discovery_tells_namespaced_from_cluster_scoped_kinds(k: kube.Kube) -> None:
    assert asyncio.run(k.resource("v1", "ServiceAccount")) == kube.Resource("serviceaccounts", True)
    role = asyncio.run(k.resource("rbac.authorization.k8s.io/v1", "ClusterRole"))
    assert role == kube.Resource("clusterroles", False)
    assert asyncio.run(k.resource("example.invalid/v1", "Widget")) is None
    sa = kube.ObjectRef("v1", "ServiceAccount", "x")
    assert asyncio.run(k.scoped(sa, "apps")).namespace == "apps"
    cr = kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "x", "apps")
    assert asyncio.run(k.scoped(cr, "apps")).namespace is None


@pytest.mark.apiserver
def test_a_missing_object_or_kind_reads_as_none(k: kube.Kube, namespace: str) -> None:
    assert asyncio.run(k.get_object(kube.ObjectRef("v1", "ConfigMap", "nope", namespace))) is None
    widget = kube.ObjectRef("example.invalid/v1", "Widget", "w", namespace)
    assert asyncio.run(k.get_object(widget)) is None


@pytest.mark.apiserver
def test_namespace_is_created_once_and_then_only_read(k: kube.Kube, kube_api: Any) -> None:
    name = f"ns-{uuid.uuid4().hex[:8]}"
    try:
        assert asyncio.run(
            k.ensure_namespace(name, labels={kube.MANAGED_BY: kube.DRIVER}, annotations={})
        )
        mark = kube_api.mark()
        assert not asyncio.run(k.ensure_namespace(name, labels={}, annotations={}))
        assert kube_api.writes_since(mark) == []
        labels = kube_api.harness.get(f"/api/v1/namespaces/{name}")["metadata"]["labels"]
        assert labels[kube.MANAGED_BY] == kube.DRIVER
    finally:
        kube_api.delete_namespace(name)


@pytest.mark.apiserver
def test_secret_is_written_only_when_its_content_differs(
    k: kube.Kube, kube_api: Any, namespace: str
) -> None:
    secret = kube.SecretData(namespace, "keys", {"id": b"one"})
    assert asyncio.run(k.ensure_secret(secret))
    mark = kube_api.mark()
    assert not asyncio.run(k.ensure_secret(secret))
    assert kube_api.writes_since(mark) == []
    assert asyncio.run(k.ensure_secret(kube.SecretData(namespace, "keys", {"other": b"two"})))
    live = kube_api.harness.get(f"/api/v1/namespaces/{namespace}/secrets/keys")
    assert live["data"] == {"other": base64.b64encode(b"two").decode()}


@pytest.mark.apiserver
def test_stamping_refuses_an_object_changed_since_it_was_read(
    k: kube.Kube, kube_api: Any, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    made = kube_api.harness.create(path, {"metadata": {"name": "sa"}})
    ref = kube.ObjectRef("v1", "ServiceAccount", "sa", namespace)
    kube_api.harness.patch(f"{path}/sa", {"metadata": {"labels": {"touched": "yes"}}})
    with pytest.raises(ClusterError, match="changed while being adopted"):
        asyncio.run(k.stamp_owner(ref, "rel", namespace, made["metadata"]["resourceVersion"]))
    live = asyncio.run(k.get_object(ref))
    assert live is not None
    asyncio.run(k.stamp_owner(ref, "rel", namespace, live["metadata"]["resourceVersion"]))
    stamped = asyncio.run(k.get_object(ref))
    assert stamped is not None
    assert kube.owner_of(stamped).is_release("rel", namespace)
    assert stamped["metadata"]["labels"]["touched"] == "yes"  # nothing else changed


def _release_secret(namespace: str, status: str) -> dict[str, Any]:
    record = {**RECORD, "namespace": namespace, "info": {"status": status, "description": "x"}}
    return {
        "metadata": {
            "name": "sh.helm.release.v1.caddy.v3",
            "labels": {"owner": "helm", "name": "caddy", "status": status, "version": "3"},
        },
        "type": kube.RELEASE_SECRET_TYPE,
        "data": {"release": kube.encode_release(record)},
    }


@pytest.mark.apiserver
def test_a_release_revision_is_unlocked_only_from_the_status_it_was_seen_in(
    k: kube.Kube, kube_api: Any, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/secrets"
    kube_api.harness.create(path, _release_secret(namespace, "pending-upgrade"))
    name = "sh.helm.release.v1.caddy.v3"
    assert not asyncio.run(
        k.set_release_status(
            namespace, name, expect="pending-install", status="failed", description="d"
        )
    )
    assert asyncio.run(
        k.set_release_status(
            namespace, name, expect="pending-upgrade", status="failed", description="d"
        )
    )
    [stored] = asyncio.run(k.list_release_secrets(namespace, "caddy"))
    assert stored["metadata"]["labels"]["status"] == "failed"
    record = kube.decode_release(stored)
    assert record["info"] == {"status": "failed", "description": "d"}
    assert record["manifest"] == RECORD["manifest"]  # the rest of the record is kept
    assert not asyncio.run(
        k.set_release_status(namespace, "absent", expect="x", status="y", description="d")
    )


@pytest.mark.apiserver
def test_workload_readiness_is_read_from_status(
    k: kube.Kube, kube_api: Any, namespace: str
) -> None:
    labels = {"app": "w"}
    kube_api.harness.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "w"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
                },
            },
        },
    )
    assert asyncio.run(k.list_workloads(namespace)) == [kube.Workload("Deployment", "w", 1, 0)]
    assert not asyncio.run(k.list_workloads(namespace))[0].is_ready()


@pytest.mark.unit
def test_an_unreachable_api_is_named(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    k = kube.Kube.connect(config, None)
    with pytest.raises(
        ClusterError, match=r"cannot reach the Kubernetes API at https://127\.0\.0\.1:9"
    ):
        asyncio.run(k.get_namespace("default"))


@pytest.mark.unit
def test_a_missing_context_is_named(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(ClusterError, match="cannot use context 'kind-x'"):
        kube.Kube.connect(config, "kind-x")
