"""spec: what a valid deployment looks like, and the one-line errors for what is not."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from laconic_helm import spec
from laconic_helm.errors import EXIT_BAD_INPUT, SpecError
from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    chart = tmp_path / "charts" / "app"
    chart.mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: app\nversion: 0.1.0\n")
    (tmp_path / "app.yaml").write_text("replicas: 1\n")
    (tmp_path / "id.json").write_text("[1,2,3]")
    (tmp_path / "ledger").mkdir()
    return tmp_path


def _load(workdir: Path, text: str) -> spec.Spec:
    path = workdir / "deployment.yaml"
    path.write_text(text)
    return spec.load_spec(path)


def _error(workdir: Path, text: str) -> str:
    with pytest.raises(SpecError) as caught:
        _load(workdir, text)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    message = caught.value.message
    assert "\n" not in message
    return message


VALID = """
cluster:
  name: lab
  ports: [{containerPort: 80, hostPort: 8080}]
  mounts: [{hostPath: ledger, containerPath: /mnt/ledger}]
images: [laconicnetwork/agave:local]
releases:
  - name: app
    chart: charts/app
    namespace: apps
    valuesFiles: [app.yaml]
    values: {image: {tag: "1.0"}}
    secrets: [{name: identity, files: {identity.json: id.json}}]
"""


def test_valid_spec_resolves_paths_against_its_folder(workdir: Path) -> None:
    s = _load(workdir, VALID)
    release = s.releases[0]
    assert release.chart == str(workdir / "charts" / "app")
    assert release.values_files == (workdir / "app.yaml",)
    assert release.secrets[0].files["identity.json"] == workdir / "id.json"
    assert s.cluster.mounts[0].host_path == workdir / "ledger"
    assert s.cluster.kube_context == "kind-lab"
    assert s.cluster.node_labels == {"ingress-ready": "true"}
    assert release.wait is True and release.timeout == 300


def test_default_spec_deploys_caddy_then_agave_on_laconic_local() -> None:
    s = spec.load_spec(None)
    assert s.cluster.name == "laconic-local"
    assert [r.name for r in s.releases] == ["caddy-ingress", "agave"]
    for release in s.releases:
        assert (Path(release.chart) / "Chart.yaml").is_file()
        assert all(p.is_file() for p in release.values_files)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster: [1", "deployment.yaml: line 1: not valid YAML"),
        ("- a\n- b\n", "deployment.yaml: expected a mapping at the top level, got list"),
        ("clutser: {}\n", "deployment.yaml: clutser: unknown key"),
        ("cluster: {name: Lab_1}\n", "cluster.name: expected a lowercase name"),
        (
            "cluster: {ports: [{containerPort: 80, hostPort: 80},"
            " {containerPort: 81, hostPort: 80}]}\n",
            "cluster: ports[1]: host port 80/TCP already used by ports[0]",
        ),
        ("cluster: {ports: [{containerPort: 0, hostPort: 80}]}\n", "ports[0].containerPort"),
        ("cluster: {provider: existing}\n", "provider 'existing' needs 'context'"),
        ("releases: [{name: app, namespace: apps}]\n", "releases[0].chart: required key"),
        (
            "releases: [{name: app, chart: charts/nope, namespace: apps}]\n",
            "releases[0].chart: no chart (Chart.yaml) at",
        ),
        (
            "releases: [{name: app, chart: charts/app, namespace: apps, valuesFiles: [no.yaml]}]\n",
            "releases[0].valuesFiles[0]: values file",
        ),
        (
            "releases: [{name: app, chart: charts/app, namespace: apps,"
            " secrets: [{name: id, files: {k: missing.json}}]}]\n",
            "releases[0].secrets[0].files.k: secret file",
        ),
        (
            "releases: [{name: app, chart: charts/app, namespace: apps},"
            " {name: app, chart: charts/app, namespace: apps}]\n",
            "releases[1]: release 'app' in namespace 'apps' duplicates releases[0]",
        ),
        (
            "releases: [{name: app, chart: charts/app, namespace: apps, timeout: soon}]\n",
            "releases[0].timeout: input should be a valid integer",
        ),
    ],
)
def test_bad_spec_gives_one_line_naming_file_and_key(
    workdir: Path, text: str, expected: str
) -> None:
    message = _error(workdir, text)
    assert expected in message
    assert message.startswith(str(workdir / "deployment.yaml"))


def test_values_file_that_is_not_a_mapping_is_named(workdir: Path) -> None:
    (workdir / "app.yaml").write_text("- just\n- a list\n")
    message = _error(
        workdir,
        "releases: [{name: app, chart: charts/app, namespace: apps, valuesFiles: [app.yaml]}]",
    )
    assert message == f"{workdir / 'app.yaml'}: expected a mapping of values, got list"


def test_missing_spec_file_and_folder(workdir: Path) -> None:
    with pytest.raises(SpecError, match="spec file does not exist"):
        spec.load_spec(workdir / "nope.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        spec.load_spec(workdir)


RETIRING = "releases: [{{name: app, chart: charts/app, namespace: apps, retire: {retire}}}]\n"


def test_retire_names_a_previous_installers_objects(workdir: Path) -> None:
    retire = (
        "{selector: 'app=laconic-1,app.kubernetes.io/stack=agave', gracePeriodSeconds: 600, "
        "objects: [{kind: Deployment, name: laconic-1-deployment}, "
        "{apiVersion: v1, kind: Service, name: laconic-1-service, namespace: other}]}"
    )
    r = _load(workdir, RETIRING.format(retire=retire)).releases[0].retire
    assert r is not None and r.grace_period_seconds == 600
    assert r.labels == {"app": "laconic-1", "app.kubernetes.io/stack": "agave"}
    assert [(o.version, o.kind, o.name, o.namespace) for o in r.objects] == [
        ("apps/v1", "Deployment", "laconic-1-deployment", None),
        ("v1", "Service", "laconic-1-service", "other"),
    ]


@pytest.mark.parametrize(
    ("retire", "expected"),
    [
        (
            "{selector: app=x, objects: [{kind: PersistentVolumeClaim, name: ledger}]}",
            "releases[0].retire.objects[0].kind: PersistentVolumeClaim holds or guards data "
            "and is never retired",
        ),
        (
            "{selector: app=x, objects: [{kind: Namespace, name: laconic-agave}]}",
            "releases[0].retire.objects[0].kind: Namespace holds or guards data",
        ),
        (
            "{selector: app=x, objects: [{kind: StatefulSet, name: db}]}",
            "releases[0].retire.objects[0].kind: 'StatefulSet' cannot be retired; expected one "
            "of Deployment, Service",
        ),
        (
            "{selector: app, objects: [{kind: Service, name: s}]}",
            "releases[0].retire.selector: expected labels as key=value[,key=value...] (got 'app')",
        ),
        (
            "{selector: app=x, objects: [{apiVersion: extensions/v1beta1, kind: Ingress, "
            "name: i}]}",
            "releases[0].retire.objects[0]: apiVersion of kind Ingress is networking.k8s.io/v1",
        ),
        ("{selector: app=x, objects: []}", "releases[0].retire.objects: needs at least one"),
        (
            "{selector: app=x, objects: [{kind: Service, name: s}, {kind: Service, name: s}]}",
            "releases[0].retire.objects: [1] Service s duplicates [0]",
        ),
        ("{objects: [{kind: Service, name: s}]}", "releases[0].retire.selector: required key"),
    ],
)
def test_bad_retire_is_refused_in_one_line(workdir: Path, retire: str, expected: str) -> None:
    assert expected in _error(workdir, RETIRING.format(retire=retire))


EXAMPLE = REPO / "examples" / "deployment.yaml"
# What a commented-out alternative looks like in the example: `# key: ...` or `# - ...`, written
# at the indentation it has once uncommented.
_ALTERNATIVE = re.compile(r"^(\s*)# (\s*(- |[A-Za-z][\w.-]*:(\s|$)).*)$")


def _with_alternatives(text: str) -> str:
    return "\n".join(
        m.group(1) + m.group(2) if (m := _ALTERNATIVE.match(line)) else line
        for line in text.splitlines()
    )


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, optional, or as the items of a tuple), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_of, typing.get_args(annotation))), None)


def _missing_fields(model: type[BaseModel], nodes: list[Any], where: str = "") -> list[str]:
    """Key paths of the model's fields that no mapping in `nodes` (at `where`) has, recursively."""
    missing = []
    for name, field in model.model_fields.items():
        if field.exclude:  # not part of the document (the spec's own file name)
            continue
        key = field.alias or name
        values = [node[key] for node in nodes if isinstance(node, dict) and key in node]
        if not values:
            missing.append(f"{where}{key}")
        elif (sub := _model_of(field.annotation)) is not None:
            items = [item for v in values for item in (v if isinstance(v, list) else [v])]
            missing += _missing_fields(sub, items, f"{where}{key}.")
    return missing


def test_example_spec_is_the_built_in_default() -> None:
    example = spec.load_spec(EXAMPLE)
    assert example.model_dump() == spec.default_spec().model_dump()
    # builtin: values files resolve to the shipped overlays wherever the spec is.
    assert example.releases[0].values_files == (
        spec.data_dir("values") / "caddy-ingress" / "kind.yaml",
    )


def test_example_spec_shows_every_field_of_the_model() -> None:
    text = EXAMPLE.read_text()
    # The walk reaches nested models; fields that would change the default are commented out.
    live_only = _missing_fields(spec.Spec, [yaml.safe_load(text)])
    assert {"cluster.mounts.hostPath", "releases.retire"} <= set(live_only)
    with_alternatives = yaml.safe_load(_with_alternatives(text))
    assert _missing_fields(spec.Spec, [with_alternatives]) == []
    # Each commented alternative is a valid value for its field.
    spec.Spec.model_validate(with_alternatives)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("logs", "key"),
    [("{maxSize: lots}", "maxSize"), ("{maxSize: 0Mi}", "maxSize"), ("{maxFiles: 1}", "maxFiles")],
)
def test_container_log_rotation_is_checked(workdir: Path, logs: str, key: str) -> None:
    text = VALID.replace("  name: lab\n", f"  name: lab\n  containerLogs: {logs}\n")
    assert f"cluster.containerLogs.{key}" in _error(workdir, text)
    default = _load(workdir, VALID).cluster.container_logs
    assert (default.max_size, default.max_files) == ("200Mi", 5)
