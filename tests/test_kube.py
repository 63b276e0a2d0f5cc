"""Kubernetes access: Helm's release record format, Secrets from files, ownership metadata."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from laconic_helm import kube

pytestmark = pytest.mark.unit

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


def test_release_record_decodes_helms_double_base64_gzip_json() -> None:
    assert kube.decode_release(_helm_secret(RECORD)) == RECORD


def test_release_record_without_gzip_still_decodes() -> None:
    assert kube.decode_release(_helm_secret(RECORD, gz=False)) == RECORD


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


def test_secret_manifest_is_opaque_labelled_and_base64() -> None:
    manifest = kube.SecretData("agave", "validator-keys", KEY).manifest()
    assert manifest["type"] == "Opaque"
    assert manifest["metadata"] == {
        "name": "validator-keys",
        "namespace": "agave",
        "labels": {kube.MANAGED_BY: kube.DRIVER},
    }
    assert base64.b64decode(manifest["data"]["identity.json"]) == b"[1,2,3]"


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


def test_secret_bytes_never_appear_in_repr() -> None:
    secret = kube.SecretData("agave", "validator-keys", {"k": b"very-secret-bytes"})
    assert "very-secret" not in repr(secret)


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


def test_object_ref_names_kind_namespace_and_name() -> None:
    assert str(kube.ObjectRef("v1", "ServiceAccount", "sa", "ns")) == "ServiceAccount ns/sa"
    assert str(kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "cr")) == (
        "ClusterRole cr"
    )
    assert kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "cr").group == (
        "rbac.authorization.k8s.io"
    )
    assert kube.ObjectRef("v1", "ConfigMap", "c").group == ""
