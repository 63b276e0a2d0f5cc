"""desired: what a release should be — values layered as helm layers them, the digest of its
inputs, and its render with real helm 3 and 4."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from laconic_helm import spec
from laconic_helm.desired import (
    DIGEST_ANNOTATION,
    DesiredRelease,
    chart_files,
    compute_digest,
    desired_release,
    load_chart,
    merge_values,
    pin_images,
    refs,
    render,
)
from laconic_helm.errors import ReleaseError, SpecError
from laconic_helm.helm import Helm
from laconic_helm.helm import connect as helm_connect
from laconic_helm.kube import SecretData

MINI = Path(__file__).parent / "charts" / "mini"
REPO = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "a" * 64

# -- values and digest ------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("layers", "merged"),
    [
        (({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}), {"a": {"b": 1, "c": 3}}),
        (({"l": [1, 2]}, {"l": [3]}), {"l": [3]}),
        (({"a": {"b": 1}}, {"a": None}), {"a": None}),
        (({"a": 1}, {"a": {"b": 2}}), {"a": {"b": 2}}),
        (({"a": {"b": 1}}, {"a": "x"}), {"a": "x"}),
        (
            ({}, {"n": {"deep": {"er": 1}}}, {"n": {"deep": {"est": 2}}}),
            {"n": {"deep": {"er": 1, "est": 2}}},
        ),
    ],
    ids=["maps-merge", "lists-replace", "null-replaces", "scalar-to-map", "map-to-scalar", "deep"],
)
def test_values_merge_like_helm(layers: tuple[dict, ...], merged: dict) -> None:
    before = [repr(layer) for layer in layers]
    assert merge_values(*layers) == merged
    assert [repr(layer) for layer in layers] == before  # inputs untouched


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    """A private copy of the mini chart, free to edit."""
    return Path(shutil.copytree(MINI, tmp_path / "mini"))


@pytest.mark.unit
def test_digest_is_stable_and_ignores_key_order(chart: Path) -> None:
    a = compute_digest(chart, {"x": 1, "y": {"p": 1, "q": 2}}, {"image/a": "sha256:1"})
    b = compute_digest(chart, {"y": {"q": 2, "p": 1}, "x": 1}, {"image/a": "sha256:1"})
    assert a == b
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 64


@pytest.mark.unit
@pytest.mark.parametrize(
    "change",
    ["template", "new-file", "values", "list-order", "extra"],
)
def test_digest_changes_with_any_input(chart: Path, change: str) -> None:
    values: dict[str, Any] = {"l": [1, 2]}
    extras = {"image/a": "sha256:1"}
    before = compute_digest(chart, values, extras)
    if change == "template":
        path = chart / "templates" / "configmap.yaml"
        path.write_text(path.read_text() + "  added: line\n")
    elif change == "new-file":
        (chart / "templates" / "NOTES.txt").write_text("hi\n")
    elif change == "values":
        values = {"l": [1, 2], "x": True}
    elif change == "list-order":
        values = {"l": [2, 1]}
    else:
        extras = {"image/a": "sha256:2"}
    assert compute_digest(chart, values, extras) != before


@pytest.mark.unit
def test_digest_skips_what_helmignore_excludes(chart: Path) -> None:
    before = compute_digest(chart, {})
    (chart / "values.yaml.swp").write_text("editor junk")
    (chart / "notes").mkdir()
    (chart / "notes" / "todo.md").write_text("later")
    assert compute_digest(chart, {}) == before
    assert "values.yaml.swp" not in chart_files(chart)
    assert "templates/deployment.yaml" in chart_files(chart)


def _spec_release(chart: Path, tmp_path: Path, **extra: Any) -> spec.Release:
    doc = {"name": "mini", "chart": str(chart), "namespace": "apps", **extra}
    top = {"releases": [doc], "images": extra.get("images", [])}
    return spec.parse_spec(top, source="test", base=tmp_path).releases[0]


@pytest.mark.unit
def test_desired_release_layers_values_and_annotates_pods(chart: Path, tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("config: {greeting: one, a: 1}\nl: [1]\n")
    (tmp_path / "two.yaml").write_text("config: {greeting: two}\nl: [2]\n")
    rel = _spec_release(
        chart, tmp_path, valuesFiles=["one.yaml", "two.yaml"], values={"config": {"b": 2}}
    )
    desired = desired_release(rel, extras={"image/x": "sha256:1"})
    assert desired.values["config"] == {"greeting": "two", "a": 1, "b": 2}
    assert desired.values["l"] == [2]
    assert desired.values["podAnnotations"] == {DIGEST_ANNOTATION: desired.digest}
    assert desired.description == f"laconic-helm digest={desired.digest}"
    assert desired_release(rel, extras={"image/x": "sha256:2"}).digest != desired.digest


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.unit
def test_pin_images_points_every_mapping_naming_an_image_at_its_reference() -> None:
    values = {
        "image": {"repository": "laconicnetwork/agave", "tag": ""},  # the chart's appVersion
        "sidecar": {"image": {"repository": "docker.io/library/busybox", "tag": "1.36"}},
        "other": {"image": {"repository": "busybox", "tag": "1.37"}},  # another tag: left alone
        "list": [{"repository": "busybox", "tag": "1.36"}],  # lists are not looked into
    }
    pinned = {
        "laconicnetwork/agave:3.1.0": f"localhost:5001/laconicnetwork/agave@{DIGEST}",
        "busybox:1.36": "localhost:5001/library/busybox:1.36",  # not pushed yet: by tag
        "absent:1": "localhost:5001/library/absent:1",
    }
    layer, found = pin_images(values, "3.1.0", pinned)
    assert layer == {
        "image": {"repository": "localhost:5001/laconicnetwork/agave", "digest": DIGEST},
        "sidecar": {"image": {"repository": "localhost:5001/library/busybox", "tag": "1.36"}},
    }
    assert found == {"laconicnetwork/agave:3.1.0", "busybox:1.36"}


@pytest.mark.unit
def test_registry_mode_pins_the_release_images_and_adds_the_pull_secret(
    chart: Path, tmp_path: Path
) -> None:
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "image:\n  repository: me/app\n  tag: '1'\n")
    rel = _spec_release(chart, tmp_path, images=["me/app:1"], values={"imagePullSecrets": []})
    secret = SecretData(
        "apps", "pull", {".dockerconfigjson": b"{}"}, "kubernetes.io/dockerconfigjson"
    )
    by_digest = {"me/app:1": f"r.example.com/me/app@{DIGEST}"}
    desired = desired_release(rel, pinned=by_digest, pull_secret=secret)
    assert desired.values["image"] == {"repository": "r.example.com/me/app", "digest": DIGEST}
    assert desired.values["imagePullSecrets"] == [{"name": "pull"}]
    assert desired.secrets == (secret,)
    assert desired.pinned == by_digest
    other = desired_release(rel, pinned={"me/app:1": f"r.example.com/me/app@sha256:{'0' * 64}"})
    assert other.digest != desired.digest  # a new push rolls the pods

    unnamed = _spec_release(chart, tmp_path, images=["me/other:2"])
    with pytest.raises(
        SpecError, match="no image `repository`/`tag` in its values names me/other:2"
    ):
        desired_release(unnamed, pinned={"me/other:2": "r.example.com/me/other:2"})


@pytest.mark.unit
def test_desired_release_leaves_values_alone_for_charts_without_pod_annotations(
    chart: Path, tmp_path: Path
) -> None:
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("podAnnotations: {}\n", ""))
    desired = desired_release(_spec_release(chart, tmp_path))
    assert "podAnnotations" not in desired.values


@pytest.mark.unit
def test_secret_files_change_the_digest_but_never_the_values(chart: Path, tmp_path: Path) -> None:
    key = tmp_path / "identity.json"
    key.write_bytes(b"[11,22,33]")
    rel = _spec_release(chart, tmp_path, secrets=[{"name": "keys", "files": {"id": str(key)}}])
    first = desired_release(rel)
    assert first.secrets[0].data == {"id": b"[11,22,33]"}
    assert "11,22,33" not in repr(first)
    assert "11,22,33" not in str(first.values)
    key.write_bytes(b"[44]")
    assert desired_release(rel).digest != first.digest


def _connect(executable: str) -> Helm:
    return asyncio.run(helm_connect(kubeconfig=None, context=None, executable=executable))


@pytest.mark.helm
def test_render_lists_every_object_with_its_namespace(helm_bin: str, tmp_path: Path) -> None:
    helm = _connect(helm_bin)
    rel = _spec_release(
        MINI, tmp_path, values={"clusterRole": {"enabled": True}, "renderNamespace": True}
    )
    docs = asyncio.run(render(helm, desired_release(rel), upgrade=False))
    rendered = refs(docs)
    assert sorted(str(r) for r in rendered) == [
        "ClusterRole mini",
        "ConfigMap mini-config",
        "Deployment mini",
        "Namespace apps",
        "ServiceAccount mini",
    ]


@pytest.mark.helm
def test_render_failure_names_the_release(helm_bin: str, chart: Path, tmp_path: Path) -> None:
    (chart / "templates" / "broken.yaml").write_text('{{ fail "no way" }}\n')
    helm = _connect(helm_bin)
    desired = desired_release(_spec_release(chart, tmp_path))
    with pytest.raises(ReleaseError, match=r"^release mini: the chart does not render.*no way"):
        asyncio.run(render(helm, desired, upgrade=False))


@pytest.mark.helm
@pytest.mark.parametrize("name", ["caddy-ingress", "agave"])
def test_project_charts_load_as_pyhelm3_charts(helm_bin: str, name: str) -> None:
    helm = _connect(helm_bin)
    desired = DesiredRelease(name, "apps", REPO / "charts" / name, {}, DIGEST)
    chart = asyncio.run(load_chart(helm, desired))
    assert chart.metadata.name == name
