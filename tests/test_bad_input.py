"""Bad input: every mistake an operator can make in the spec, the files it names or the host is
refused with one line naming the file, key or object, exit code 2, and no write at all.

The deploys here target one stand-in kind cluster made for the module (the driver's own, with
nothing loaded or installed yet), so a run that went ahead would write: load images into its
node, create namespaces and releases. After each refusal the API's audit log shows no write of
the driver's or helm's, the node's image list is as before, and no cluster was made.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import deployment_under_test as dep
from tests.harness import nodes
from tests.harness.api import KubeAPI
from tests.harness.pytest_fixtures import KindCLI

pytestmark = [pytest.mark.docker, pytest.mark.apiserver]


@dataclass
class Target:
    """The module's cluster (nothing deployed on it) and a valid spec for it."""

    kind: KindCLI
    cluster: str
    doc: dict[str, Any]
    api: KubeAPI
    root: Path

    @property
    def node(self) -> str:
        return f"{self.cluster}-control-plane"

    def env(self, **extra: str) -> dict[str, str]:
        return {**dep.driver_env(self.kind, self.root / "state", "helm"), **extra}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("bad-input")
    with dep.staged(root, "bad") as stage:
        empty = root / "empty"
        empty.mkdir()
        bare = {**stage.doc, "images": [], "releases": []}
        made = dep.Deployment(dep.write_spec(empty, bare), stage.cluster, {})
        made.env = dep.driver_env(stage.kind, root / "state", "helm")
        assert made.run("deploy").code == 0
        yield Target(stage.kind, stage.cluster, stage.doc, stage.kind.api(stage.cluster), root)


def refused(
    target: Target,
    spec: dict[str, Any] | Path,
    folder: Path,
    *expect: str,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    watch: tuple[KubeAPI, str] | None = None,
) -> str:
    """Runs `deploy` on `spec` and checks the refusal: exit 2, one line holding each of
    `expect`, nothing written to the cluster (or the `watch`ed one: its API and node) or its
    node, no node container made or removed. Returns the line."""
    path = spec if isinstance(spec, Path) else dep.write_spec(folder, spec)
    deployment = dep.Deployment(path, target.cluster, env or target.env())
    api, node = watch or (target.api, target.node)
    images = nodes.ctr_images(node)
    named = spec["cluster"]["name"] if isinstance(spec, dict) else target.cluster
    containers = {name: nodes.list_nodes(name) for name in {named, target.cluster}}
    mark = api.mark()
    argv = [*prefix, *deployment.argv("deploy", *args)]
    done = subprocess.run(
        argv, env=deployment.env, capture_output=True, text=True, timeout=300, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    error = str(report.get("error") or "")
    assert done.returncode == 2, f"exit {done.returncode}: {error}\n{done.stderr}"
    assert report["exit_code"] == 2 and report["ok"] is False
    assert error and "\n" not in error, repr(error)
    for part in expect:
        assert part in error, f"{part!r} not in: {error}"
    assert api.writes_since(mark) == []
    assert nodes.ctr_images(node) == images
    assert {name: nodes.list_nodes(name) for name in containers} == containers
    return error


Mutation = Callable[[dict[str, Any], Path], "dict[str, Any] | Path"]


def _text(folder: Path, text: str) -> Path:
    path = folder / "deployment.yaml"
    path.write_text(text)
    return path


def _release(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in doc["releases"] if r["name"] == name)


def _set(path: str, value: Any) -> Mutation:
    """Sets a key (dotted, with [i] for list items) of the spec."""

    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        node: Any = doc
        parts = path.replace("[", ".[").split(".")
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value
        return doc

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        parent, _, key = path.rpartition(".")
        node: Any = doc
        for part in parent.replace("[", ".[").split("."):
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        del node[key]
        return doc

    return mutate


def _secret_file(make: Callable[[Path], Path]) -> Mutation:
    """Points the identity Secret's file at what `make` leaves in the test's folder."""

    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        files = _release(doc, "agave")["secrets"][0]["files"]
        files["identity.json"] = str(make(folder))
        return doc

    return mutate


def _a_folder(folder: Path) -> Path:
    path = folder / "keys"
    path.mkdir()
    return path


def _values_file(content: bytes | None) -> Mutation:
    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        made = folder / "extra-values.yaml"
        if content is not None:
            made.write_bytes(content)
        _release(doc, "agave")["valuesFiles"].append(str(made))
        return doc

    return mutate


def _agave_values(values: dict[str, Any]) -> Mutation:
    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        agave = _release(doc, "agave")
        agave["values"] = {**agave["values"], **values}
        return doc

    return mutate


def _duplicate_release(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    doc["releases"].append(copy.deepcopy(doc["releases"][1]))
    return doc


def _overlapping_ports(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    ports = doc["cluster"]["ports"]
    ports.append({**ports[0], "containerPort": 8080})
    return doc


def _mount(host_path: Callable[[Path], Path]) -> Mutation:
    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        doc["cluster"]["mounts"][0]["hostPath"] = str(host_path(folder))
        return doc

    return mutate


def _a_file(folder: Path) -> Path:
    path = folder / "not-a-folder"
    path.write_text("x")
    return path


def _image(ref: str) -> Mutation:
    def mutate(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
        doc["images"].append(ref)
        _release(doc, "agave")["images"].append(ref)
        return doc

    return mutate


def _for_new_cluster(mutate: Mutation) -> Mutation:
    """`mutate`, on a spec for a cluster that does not exist yet (fresh host ports)."""

    def both(doc: dict[str, Any], folder: Path) -> dict[str, Any] | Path:
        doc["cluster"]["name"] = "lh-bad-new"
        for port in doc["cluster"]["ports"]:
            port["hostPort"] = dep.free_port()
        return mutate(doc, folder)

    return both


def _image_by_id(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    image_id = nodes.docker("image", "inspect", "--format", "{{.Id}}", doc["images"][1]).strip()
    doc["images"][1] = image_id
    _release(doc, "agave")["images"] = [image_id]
    return doc


CASES: dict[str, tuple[Mutation, tuple[str, ...]]] = {
    "malformed-yaml": (
        lambda doc, folder: _text(folder, "cluster:\n  name: [unclosed\nreleases: []\n"),
        ("deployment.yaml", "line", "not valid YAML"),
    ),
    "top-level-list": (
        lambda doc, folder: _text(folder, "- cluster\n- releases\n"),
        ("deployment.yaml", "expected a mapping"),
    ),
    "unknown-top-level-key": (_set("clustr", {"name": "x"}), ("clustr", "unknown key")),
    "unknown-nested-key": (
        _set("releases[1].valueFiles", ["x.yaml"]),
        ("releases[1].valueFiles", "unknown key"),
    ),
    "wrong-type-port": (
        _set("cluster.ports[0].hostPort", "eighty"),
        ("cluster.ports[0].hostPort", "eighty"),
    ),
    "wrong-type-releases": (_set("releases", {"agave": {}}), ("releases",)),
    "wrong-type-timeout": (_set("releases[0].timeout", -5), ("releases[0].timeout",)),
    "missing-namespace": (_drop("releases[0].namespace"), ("releases[0].namespace", "missing")),
    "invalid-release-name": (_set("releases[1].name", "Agave_Node"), ("releases[1].name",)),
    "existing-without-context": (
        _set("cluster.provider", "existing"),
        ("cluster", "context"),
    ),
    "registry-port-out-of-range": (
        _set("imageDelivery", {"local": {"port": 0}}),
        ("imageDelivery.local.port",),
    ),
    "registry-address-not-a-registry": (
        _set("imageDelivery", {"external": {"address": "https://registry.example.com"}}),
        ("imageDelivery.external.address",),
    ),
    "missing-chart": (
        lambda doc, folder: _set("releases[1].chart", str(folder / "no-chart"))(doc, folder),
        ("releases[1].chart", "no-chart"),
    ),
    "missing-values-file": (_values_file(None), ("valuesFiles[1]", "extra-values.yaml")),
    "values-file-malformed": (
        _values_file(b"ports: {rpc: [\n"),
        ("extra-values.yaml", "not valid YAML"),
    ),
    "values-file-not-a-mapping": (_values_file(b"- 1\n- 2\n"), ("extra-values.yaml", "mapping")),
    "missing-secret-file": (
        _secret_file(lambda folder: folder / "absent.json"),
        ("releases[1].secrets[0].files.identity.json", "absent.json", "does not exist"),
    ),
    "secret-file-is-a-folder": (
        _secret_file(_a_folder),
        ("releases[1].secrets[0].files.identity.json", "keys", "not a file"),
    ),
    "duplicate-release": (_duplicate_release, ("releases[2]", "agave", "duplicates")),
    "port-out-of-range": (
        _set("cluster.ports[0].hostPort", 70000),
        ("cluster.ports[0].hostPort",),
    ),
    "overlapping-ports": (_overlapping_ports, ("ports[2]", "already used by ports[0]")),
    "dynamic-port-range-too-small": (
        _agave_values({"ports": {"dynamicPortRange": "9000-9010"}}),
        ("agave", "dynamicPortRange", "26"),
    ),
    "values-against-chart-schema": (
        _agave_values({"ports": {"rpc": "eighty"}}),
        ("agave", "/ports/rpc"),
    ),
    "mount-source-missing": (
        _mount(lambda folder: folder / "no-such-folder"),
        ("cluster.mounts[0].hostPath", "no-such-folder", "does not exist"),
    ),
    "mount-source-not-a-folder": (
        _mount(_a_file),
        ("cluster.mounts[0].hostPath", "not a folder"),
    ),
    "image-missing-locally": (
        _image("laconic-helm-test/never-built:v0"),
        ("laconic-helm-test/never-built:v0", "not present locally"),
    ),
    "image-given-by-id": (_image_by_id, ("give its repository:tag",)),
    "release-image-not-listed": (
        _set("releases[0].images", ["laconic-helm-test/elsewhere:v1"]),
        ("releases[0].images[0]", "not in the top-level images"),
    ),
    "context-of-another-cluster": (
        _set("cluster.context", "kind-some-other-cluster"),
        ("cluster.context", "kind-some-other-cluster"),
    ),
    "listen-address-not-here": (
        _for_new_cluster(_set("cluster.ports[0].listenAddress", "192.0.2.7")),
        ("cluster.ports[0].listenAddress", "192.0.2.7", "not an address of this host"),
    ),
    "node-labels-differ": (
        _set("cluster.nodeLabels", {"ingress-ready": "true", "tier": "rpc"}),
        ("cluster", "node label tier=rpc", "--recreate-cluster"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_mistakes_are_refused_before_any_write(
    case: str, target: Target, tmp_path: Path
) -> None:
    mutate, expect = CASES[case]
    spec = mutate(copy.deepcopy(target.doc), tmp_path)
    refused(target, spec, tmp_path, *expect)


# --- mistakes that need something on the host -------------------------------------------------


@pytest.fixture(scope="module")
def foreign(target: Target) -> tuple[str, KubeAPI]:
    """A kind cluster someone made by hand (no ports published, no record of laconic-helm's)."""
    name = target.kind.new_name("foreign")
    target.kind.run("create", "cluster", "--name", name)
    return name, target.kind.api(name)


def _elsewhere(doc: dict[str, Any], cluster: str) -> dict[str, Any]:
    """The spec aimed at cluster `cluster` instead, with fresh host ports."""
    doc = copy.deepcopy(doc)
    doc["cluster"]["name"] = cluster
    for port in doc["cluster"]["ports"]:
        port["hostPort"] = dep.free_port()
    return doc


@contextlib.contextmanager
def _listening(port: int) -> Iterator[int]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen()
        yield port


def _port_80_or_free() -> int:
    """Port 80 where this test may bind it (as root), else any free port: the check is the
    same, only the driver's way to see the holder differs."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", 80))
        except PermissionError:
            return dep.free_port()
        except OSError:
            pass  # held already: by another process, as the test wants
    return 80


def test_host_port_80_held_by_another_process(target: Target, tmp_path: Path) -> None:
    doc = _elsewhere(target.doc, "lh-bad-port")
    port = _port_80_or_free()
    doc["cluster"]["ports"][0]["hostPort"] = port
    doc["cluster"]["ports"][0]["listenAddress"] = "0.0.0.0"
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # already held by someone else: just as good
            stack.enter_context(_listening(port))
        refused(target, doc, tmp_path, "cluster.ports[0]", f"host port {port}/TCP", "in use by")


def test_host_port_published_by_another_cluster(
    target: Target, foreign: tuple[str, KubeAPI], tmp_path: Path
) -> None:
    name, _ = foreign
    published = nodes.docker("port", f"{name}-control-plane").split(":")[-1].strip()
    doc = _elsewhere(target.doc, "lh-bad-port2")
    doc["cluster"]["ports"][0]["hostPort"] = int(published)
    error = refused(target, doc, tmp_path, "cluster.ports[0]", f"host port {published}/TCP")
    assert f"kind cluster {name}" in error


def test_name_clash_with_a_cluster_this_tool_did_not_create(
    target: Target, foreign: tuple[str, KubeAPI], tmp_path: Path
) -> None:
    name, api = foreign
    refused(
        target,
        _elsewhere(target.doc, name),
        tmp_path,
        f"cluster {name}",
        "no record of creating it",
        "will not change it",
        watch=(api, f"{name}-control-plane"),
    )


def test_kube_context_pointing_at_another_cluster(
    target: Target, foreign: tuple[str, KubeAPI], tmp_path: Path
) -> None:
    """The operator's kubeconfig has the spec's context, but it reaches the foreign cluster."""
    name, _ = foreign
    doc = yaml.safe_load(target.kind.kubeconfig.read_text())
    theirs = next(c for c in doc["clusters"] if c["name"] == f"kind-{name}")
    ours = next(c for c in doc["clusters"] if c["name"] == f"kind-{target.cluster}")
    ours["cluster"]["server"] = theirs["cluster"]["server"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(doc))
    refused(
        target,
        target.doc,
        tmp_path,
        f"kube context kind-{target.cluster}",
        str(kubeconfig),
        theirs["cluster"]["server"],
        env=target.env(KUBECONFIG=str(kubeconfig)),
    )


def _without_root_privilege() -> tuple[str, ...]:
    """As root, file modes bind only without the capabilities that override them."""
    if os.geteuid() != 0:
        return ()
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_unreadable_deployment_dir(target: Target, tmp_path: Path) -> None:
    folder = tmp_path / "deployment"
    folder.mkdir()
    spec = dep.write_spec(folder, target.doc)
    folder.chmod(0)
    try:
        refused(
            target, spec, tmp_path, str(spec), "Permission denied",
            prefix=_without_root_privilege(),
        )  # fmt: skip
    finally:
        folder.chmod(0o700)


def test_unreadable_values_file(target: Target, tmp_path: Path) -> None:
    doc = _values_file(b"mode: test\n")(copy.deepcopy(target.doc), tmp_path)
    (tmp_path / "extra-values.yaml").chmod(0)
    refused(
        target, doc, tmp_path, "extra-values.yaml", "cannot read",
        prefix=_without_root_privilege(),
    )  # fmt: skip


def test_spec_file_absent(target: Target, tmp_path: Path) -> None:
    refused(target, tmp_path / "nowhere.yaml", tmp_path, "nowhere.yaml", "does not exist")


def test_spec_path_is_a_folder(target: Target, tmp_path: Path) -> None:
    refused(target, tmp_path, tmp_path, str(tmp_path), "folder")


def test_deadline_shorter_than_a_clean_stop(target: Target, tmp_path: Path) -> None:
    refused(target, target.doc, tmp_path, "--deadline", "too short", args=("--deadline", "5"))


def test_plan_lists_every_problem_in_one_run(target: Target, tmp_path: Path) -> None:
    """A local image not built yet, a host port taken and a value the chart refuses: `plan`
    names all three (a deploy would stop at the first), says which spec it read, exits 2 and
    writes nothing."""
    doc = _elsewhere(target.doc, "lh-bad-many")
    doc["images"] = [*doc["images"], "laconic-helm-test/not-built:1"]
    port = dep.free_port()
    doc["cluster"]["ports"][0] |= {"hostPort": port, "listenAddress": "0.0.0.0"}
    _release(doc, "agave")["values"]["mode"] = "mainnet"
    spec = dep.write_spec(tmp_path, doc)
    deployment = dep.Deployment(spec, target.cluster, target.env())
    mark = target.api.mark()
    with _listening(port):
        done = subprocess.run(
            [*deployment.argv("plan", json_output=False), "-o", "json"],  # -o after the command
            env=deployment.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == 2 and report["exit_code"] == 2, done.stderr
    problems = report["problems"]
    assert len(problems) == 3, problems
    expected = ("laconic-helm-test/not-built:1", f"host port {port}/TCP", "mode")
    for part in expected:
        assert sum(part in p for p in problems) == 1, f"{part!r} not in one of {problems}"
        assert any(part in line for line in done.stderr.splitlines() if "✗" in line)
    assert "\n" not in report["error"] and "2 more" in report["error"]
    assert report["spec"] == str(spec) and f"spec: {spec}" in done.stderr
    assert target.api.writes_since(mark) == []
    assert nodes.list_nodes("lh-bad-many") == []
