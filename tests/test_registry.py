"""Registry mode (registry.py): images pushed to a registry and pulled by the nodes, with the
CNCF distribution registry built from its Go module as the registry container and a two-node
stand-in cluster of real containerd pulling from it. Present images cost nothing; a registry
container removed, emptied or stopped, a killed push and a killed pull are all finished by the
next run."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from laconic_helm import pullsecret, registry
from laconic_helm.cli import main
from laconic_helm.containerd import NodeState
from laconic_helm.images import LocalImage
from laconic_helm.output import Reporter
from laconic_helm.spec import parse_spec
from tests.harness import deployment_under_test as d
from tests.harness import nodes, waits
from tests.harness import registry as registry_harness
from tests.harness.loopback import free_port
from tests.harness.registry import ensure_registry_image

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.harness.imagebuild import Builder
    from tests.harness.pytest_fixtures import KindCLI

MiB = 1 << 20
DIGEST = "sha256:" + "ab" * 32


def _image(ref: str, repo_digests: tuple[str, ...] = ()) -> LocalImage:
    return LocalImage(ref, "", "sha256:" + "cd" * 32, ("sha256:" + "ef" * 32,), 1, repo_digests)


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("prefix", "ref", "pushed", "by_digest"),
    [
        ("localhost:5001", "laconicnetwork/agave:local",
         "localhost:5001/laconicnetwork/agave:local",
         f"localhost:5001/laconicnetwork/agave@{DIGEST}"),
        ("localhost:5001", "busybox:1", "localhost:5001/library/busybox:1",
         f"localhost:5001/library/busybox@{DIGEST}"),
        ("localhost:5001", "ghcr.io/x/caddy:2", "localhost:5001/ghcr.io/x/caddy:2",
         f"localhost:5001/ghcr.io/x/caddy@{DIGEST}"),
        ("registry.example.com:443/laconic", "me/app:3",
         "registry.example.com:443/laconic/me/app:3",
         f"registry.example.com:443/laconic/me/app@{DIGEST}"),
    ],
)  # fmt: skip
def test_images_are_named_under_the_registry(
    prefix: str, ref: str, pushed: str, by_digest: str
) -> None:
    target = registry.Where(prefix)
    assert registry.pushed_name(target, _image(ref)) == pushed
    assert registry.digest_ref(target, _image(ref), DIGEST) == by_digest


@pytest.mark.unit
def test_plan_makes_the_registry_pushes_and_pulls_only_what_is_missing() -> None:
    target = registry.local_target("lh", 5001, "registry:2")
    image = _image("me/app:1")
    nodes_ = {n: NodeState(n, {}, {}) for n in ("lh-control-plane", "lh-worker")}
    fresh = registry.RegistrySeen(None, "kind", dict.fromkeys(nodes_), {image.ref: None}, nodes_)
    assert [(a.verb, a.target, a.detail) for a in registry.plan(target, [image], fresh)] == [
        ("create-registry", "lh-registry", "127.0.0.1:5001"),
        ("configure-node", "lh-control-plane", "/etc/containerd/certs.d/localhost:5001/hosts.toml"),
        ("configure-node", "lh-worker", "/etc/containerd/certs.d/localhost:5001/hosts.toml"),
        ("push-image", "me/app:1", "to localhost:5001"),
        ("pull-image", "me/app:1", "into lh-control-plane"),
        ("pull-image", "me/app:1", "into lh-worker"),
    ]
    # A stopped container on another network; the nodes configured; pushed; one node holds it.
    stopped = registry.Container(False, "registry:2", 5001, ("bridge",))
    hosts = dict.fromkeys(nodes_, registry.hosts_toml(target))
    pulled = f"localhost:5001/me/app@{DIGEST}"
    config = "sha256:" + "12" * 32
    holding = NodeState(
        "lh-worker",
        {pulled: DIGEST},
        {
            DIGEST: {"containerd.io/gc.ref.content.config": image.id},
            image.id: {"containerd.io/gc.ref.snapshot.overlayfs": image.chain_id},
            config: {},
        },
    )
    seen = registry.RegistrySeen(
        stopped, "kind", hosts, {image.ref: DIGEST}, {**nodes_, "lh-worker": holding}
    )
    assert [(a.verb, a.detail) for a in registry.plan(target, [image], seen)] == [
        ("start-registry", ""),
        ("connect-registry", "network kind"),
        ("pull-image", "into lh-control-plane"),
    ]
    assert registry.references(target, [image], seen) == {image.ref: pulled}


@pytest.mark.unit
def test_before_a_push_the_digest_docker_recorded_is_assumed() -> None:
    target = registry.local_target("lh", 5001, "registry:2")
    recorded = _image("me/app:1", (f"localhost:5001/me/app@{DIGEST}", f"other/app@{'0' * 64}"))
    assert registry.predicted_references(target, [recorded, _image("me/new:2")]) == {
        "me/app:1": f"localhost:5001/me/app@{DIGEST}",
        "me/new:2": "localhost:5001/me/new:2",
    }


@pytest.mark.unit
def test_a_long_push_or_pull_shows_a_line_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_TICK", 0.02)
    out = io.StringIO()
    done = [0]

    async def work() -> None:
        async with registry._ticking(Reporter("human", stream=out), lambda: f"{done[0]}/3 done"):
            for _ in range(3):
                await asyncio.sleep(0.05)
                done[0] += 1

    asyncio.run(work())
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("  0/3 done (") and "3/3" not in lines[-1]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"cluster": {"provider": "existing", "context": "c"}, "images": ["a:1"]},
         "imageDelivery.external: provider 'existing' needs a registry"),
        ({"cluster": {"provider": "existing", "context": "c"},
          "imageDelivery": {"mode": "stream"}},
         "imageDelivery.mode: stream needs kind nodes"),
        ({"imageDelivery": {"external": {"address": "Registry.Example.com"}}},
         "imageDelivery.external.address"),
        ({"imageDelivery": {"local": {"port": 70000}}}, "imageDelivery.local.port"),
    ],
)  # fmt: skip
def test_spec_refuses_a_delivery_that_cannot_work(doc: dict[str, object], message: str) -> None:
    from laconic_helm.errors import SpecError

    with pytest.raises(SpecError) as caught:
        parse_spec(doc, source="d.yaml", base=Path.cwd())  # type: ignore[arg-type]
    assert caught.value.message.startswith("d.yaml: ")
    assert message in caught.value.message


@pytest.mark.unit
def test_delivery_defaults_to_registry_where_a_rebuilt_layer_costs_least() -> None:
    def mode(doc: dict[str, object]) -> str:
        return parse_spec(doc, source="d", base=Path.cwd()).delivery_mode  # type: ignore[arg-type]

    assert mode({}) == "registry"
    assert mode({"imageDelivery": {"mode": "stream"}}) == "stream"
    assert mode({"imageDelivery": {"external": {"address": "r.example.com/x"}}}) == "registry"
    existing = {"provider": "existing", "context": "c"}
    assert mode({"cluster": existing, "imageDelivery": {"external": {"address": "r.io"}}}) == (
        "registry"
    )


# --- a real registry container and two stand-in nodes ---------------------------------------


class RegistryCluster:
    """Two stand-in nodes on their own network, and the port their local registry gets."""

    def __init__(self) -> None:
        self.name = f"lh-reg-{uuid.uuid4().hex[:8]}"
        self.network = f"{self.name}-net"
        self.port = free_port()
        self.image = ensure_registry_image()
        self.container = f"{self.name}-registry"
        self.nodes: list[str] = []

    def start(self) -> None:
        nodes.docker("network", "create", self.network)
        self.nodes = nodes.create_cluster(
            self.name, nodes.registry_node_specs(self.name, self.network, workers=1)
        )

    def stop(self) -> None:
        nodes.delete_cluster(self.name)
        nodes.docker("rm", "-f", self.container, check=False)
        nodes.docker("volume", "rm", "-f", self.container, check=False)
        nodes.docker("network", "rm", self.network, check=False)

    def cli(self, *refs: str) -> list[str]:
        return [
            sys.executable, "-m", "laconic_helm", "images", "load", "--cluster", self.name,
            "--via", "registry", "--registry-port", str(self.port),
            "--registry-image", self.image, *refs,
        ]  # fmt: skip

    def load(self, *refs: str) -> dict[str, registry.Pushed]:
        target = registry.local_target(self.name, self.port, self.image)

        async def run() -> list[registry.Pushed]:
            from laconic_helm import images

            found, states = await images.check_inputs(self.name, refs)
            seen = await registry.observe(target, found, states)
            planned = registry.plan(target, found, seen)
            reporter = Reporter("human", stream=io.StringIO())
            results, _ = await registry.apply(target, found, seen, planned, reporter)
            self.last_plan = [a.verb for a in planned]
            return results

        return {r.image: r for r in asyncio.run(run())}

    def manifest(self, path: str, reference: str) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/{path}/manifests/{reference}",
            method="HEAD",
            headers={"Accept": ",".join(registry.MANIFEST_TYPES)},
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def reg() -> Iterator[RegistryCluster]:
    found = RegistryCluster()
    try:
        found.start()
        yield found
    finally:
        found.stop()


def _pulled(reg: RegistryCluster, result: registry.Pushed) -> None:
    for node in reg.nodes:
        assert result.reference in nodes.ctr_images(node), f"{node} lacks {result.reference}"


@pytest.mark.docker
def test_two_nodes_pull_what_was_pushed_and_a_rerun_moves_nothing(
    builder: Builder, reg: RegistryCluster
) -> None:
    ref = builder.build("a:1", {"base": os.urandom(3 * MiB), "top": os.urandom(256 << 10)})
    first = reg.load(ref)[ref]
    assert first.status == "push-image"
    assert 3 * MiB < first.bytes_pushed < 4 * MiB  # random bytes do not compress
    assert first.nodes == dict.fromkeys(reg.nodes, "pull-image")
    assert first.reference.startswith(f"localhost:{reg.port}/{builder.repo}/a@sha256:")
    _pulled(reg, first)

    again = reg.load(ref)[ref]
    assert reg.last_plan == []
    assert (again.status, again.bytes_pushed, again.reference) == ("up-to-date", 0, first.reference)
    assert again.nodes == dict.fromkeys(reg.nodes, "up-to-date")

    done = CliRunner().invoke(main, [*reg.cli(ref)[3:], "--output", "json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["changed"], report["images"][0]["reference"]) == (False, first.reference)


@pytest.mark.docker
def test_a_rebuilt_image_pushes_and_pulls_only_its_new_layer(
    builder: Builder, reg: RegistryCluster
) -> None:
    base = os.urandom(4 * MiB)
    old = builder.build("app:1", {"base": base, "top": os.urandom(64 << 10)})
    reg.load(old)
    new = builder.build("app:1", {"base": base, "top": os.urandom(512 << 10)})
    result = reg.load(new)[new]
    assert result.status == "push-image"
    assert 512 << 10 < result.bytes_pushed < MiB  # the base layer stayed in the registry
    _pulled(reg, result)


@pytest.mark.docker
def test_registry_removed_stopped_or_emptied_is_made_again_and_refilled(
    builder: Builder, reg: RegistryCluster
) -> None:
    ref = builder.build("b:1", {"base": os.urandom(2 * MiB)})
    first = reg.load(ref)[ref]

    nodes.docker("stop", reg.container)
    again = reg.load(ref)[ref]
    assert reg.last_plan == ["start-registry", "push-image"]  # a stopped one cannot be asked
    assert (again.reference, again.bytes_pushed) == (first.reference, 0)

    nodes.docker("rm", "-f", reg.container)  # its volume stays: the blobs are still there
    again = reg.load(ref)[ref]
    assert reg.last_plan == ["create-registry", "push-image"]
    assert (again.reference, again.bytes_pushed) == (first.reference, 0)

    nodes.docker("rm", "-f", reg.container)
    nodes.docker("volume", "rm", reg.container)  # now the blobs are gone too
    again = reg.load(ref)[ref]
    assert reg.last_plan == ["create-registry", "push-image"]
    assert again.reference == first.reference and again.bytes_pushed > 2 * MiB
    assert reg.manifest(again.reference.split("/", 1)[1].split("@")[0], first.reference[-71:])
    assert reg.load(ref)[ref].status == "up-to-date"


def _kill_when(loader: subprocess.Popen[bytes], reached: Callable[[], bool], what: str) -> None:
    try:
        waits.wait_until(lambda: reached() or loader.poll() is not None, what, 120)
        assert loader.poll() is None, f"the load finished before {what}"
        loader.send_signal(signal.SIGKILL)
    finally:
        loader.wait()


@pytest.mark.docker
def test_a_killed_push_is_finished_by_the_next_run(builder: Builder, reg: RegistryCluster) -> None:
    ref = builder.build("big:1", {f"l{i}": os.urandom(40 * MiB) for i in range(4)})
    reg.load(builder.build("warm:1", {"w": b"w"}))  # the registry is up: the push is timed alone
    loader = subprocess.Popen(reg.cli(ref), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pushed_name = registry.pushed_name(registry.local_target(reg.name, reg.port, ""), _image(ref))

    def pushing() -> bool:
        listed = nodes.docker("images", "-q", pushed_name).strip()
        return bool(listed)  # tagged for the push, which starts at once

    _kill_when(loader, pushing, "the push started")
    path, tag = pushed_name.split("/", 1)[1].rsplit(":", 1)
    assert not reg.manifest(path, tag), "the push completed before it could be interrupted"

    result = reg.load(ref)[ref]
    assert result.status == "push-image"
    _pulled(reg, result)
    assert reg.load(ref)[ref].status == "up-to-date"


@pytest.mark.docker
def test_a_killed_pull_is_finished_by_the_next_run(builder: Builder, reg: RegistryCluster) -> None:
    ref = builder.build("pull:1", {f"l{i}": os.urandom(40 * MiB) for i in range(4)})
    loader = subprocess.Popen(reg.cli(ref), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pushed_name = registry.pushed_name(registry.local_target(reg.name, reg.port, ""), _image(ref))
    path, tag = pushed_name.split("/", 1)[1].rsplit(":", 1)
    _kill_when(loader, lambda: reg.manifest(path, tag), "the push completed")

    result = reg.load(ref)[ref]
    assert set(reg.last_plan) <= {"pull-image"}  # the push is not repeated
    assert (result.status, result.bytes_pushed) == ("up-to-date", 0)
    _pulled(reg, result)


@pytest.mark.docker
def test_bad_input_is_refused_before_anything_moves(builder: Builder, reg: RegistryCluster) -> None:
    ref = builder.build("c:1", {"c": b"c"})
    plain = f"lh-plain-{uuid.uuid4().hex[:8]}"
    try:
        nodes.create_cluster(plain)  # a cluster made before registry mode: no host config
        done = CliRunner().invoke(main, [*reg.cli(ref)[3:6], plain, *reg.cli(ref)[7:]])
        assert done.exit_code == 2
        assert f"node {plain}-control-plane: its containerd does not read registry" in done.output
        assert "Traceback" not in done.output
    finally:
        nodes.delete_cluster(plain)
    assert nodes.docker("ps", "-aq", "--filter", f"name={plain}-registry").strip() == ""

    # A container of someone else under the registry's name: named, and left alone.
    nodes.docker("create", "--name", reg.container, reg.image)
    done = CliRunner().invoke(main, reg.cli(ref)[3:])
    assert done.exit_code == 2, done.output
    assert f"container {reg.container} exists and is not this tool's registry" in done.output
    assert nodes.docker("ps", "-aq", "--filter", f"name=^{reg.container}$").strip()
    nodes.docker("rm", reg.container)

    digest_ref = f"{ref}@sha256:{'0' * 64}"
    done = CliRunner().invoke(main, reg.cli(digest_ref)[3:])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert nodes.docker("ps", "-aq", "--filter", f"name={reg.container}").strip() == ""


# --- the whole deploy on the kind stand-in ------------------------------------------------


def _pod_images(kind_cli: KindCLI, cluster: str, namespace: str) -> set[str]:
    pods = kind_cli.api(cluster).harness.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    return {c["image"] for p in pods for c in p["spec"]["containers"]}


@pytest.mark.parametrize("kind_cli", ["standin"], indirect=True)
def test_deploy_in_registry_mode_runs_the_releases_from_the_pushed_digests(
    kind_cli: KindCLI, helm_bin: str, tmp_path: Path
) -> None:
    """The kind stand-in's kubelet runs a pod only when its node holds the pod's image."""
    with d.chart_images() as images:
        cluster = kind_cli.new_name("reg")
        doc = d.full_spec(tmp_path, cluster, images, d.make_files(tmp_path / "files", cluster))
        doc["releases"][1]["values"]["volumes"] = {"ledger": {"type": "emptyDir"}}
        port = free_port()
        doc["imageDelivery"] = {
            "mode": "registry",
            "local": {"port": port, "image": ensure_registry_image()},
        }
        spec = d.write_spec(tmp_path, doc)
        run = d.Deployment(spec, cluster, d.driver_env(kind_cli, tmp_path / "state", helm_bin))
        try:
            with kind_cli.kubelets():
                planned = run.run("plan")
                assert planned.code == 0, f"{planned.error}\n{planned.stderr}"
                first = run.run("deploy")
                assert first.code == 0, f"{first.error}\n{first.stderr}"
                taken = d.actions_taken(first.report)
                assert [a.split(" (")[0] for a in taken] == [
                    a.split(" (")[0] for a in planned.report["actions"]
                ]
                step = next(s for s in first.report["steps"] if s["name"].startswith("images via"))
                pinned = {i["image"]: i["reference"] for i in step["data"]["images"]}
                assert all(r.startswith(f"localhost:{port}/") for r in pinned.values())
                assert _pod_images(kind_cli, cluster, d.AGAVE_NAMESPACE) >= {pinned[images.agave]}
                assert pinned[images.caddy] in _pod_images(kind_cli, cluster, d.CADDY_NAMESPACE)

                again = run.run("deploy")
                assert again.code == 0 and again.report["changed"] is False, again.stderr
                assert run.run("plan").report["actions"] == []

                # A rebuilt agave image: pushed, pulled, and only the agave release upgraded.
                d.build_image(images.agave, [os.urandom(1 << 20)], tmp_path)
                planned = run.run("plan").report["actions"]
                rebuilt = run.run("deploy")
                assert rebuilt.code == 0, rebuilt.stderr
                # Each line as planned; only the new release digest was unknown before the push.
                assert [a.split(" (")[0] for a in d.actions_taken(rebuilt.report)] == [
                    a.split(" (")[0] for a in planned
                ]
                taken = [a for a in d.actions_taken(rebuilt.report) if "upgrade-release" not in a]
                assert taken == [a for a in planned if "upgrade-release" not in a]
                verbs = sorted({line.split(": ", 1)[1].split()[0] for line in planned})
                assert verbs == ["pull-image", "push-image", "upgrade-release"], planned
                assert not any("caddy" in line for line in planned)
                step = next(s for s in rebuilt.report["steps"] if s["name"].startswith("images"))
                new = {i["image"]: i["reference"] for i in step["data"]["images"]}
                assert new[images.agave] != pinned[images.agave]
                assert new[images.agave] in _pod_images(kind_cli, cluster, d.AGAVE_NAMESPACE)

            down = run.run("down", "--delete-cluster")
            assert down.code == 0, down.stderr
            registry_ = f"{cluster}-registry"
            assert nodes.docker("ps", "-aq", "--filter", f"name=^{registry_}$").strip() == ""
            assert nodes.docker("volume", "ls", "-q", "--filter", f"name=^{registry_}$").strip()
        finally:
            nodes.docker("rm", "-f", f"{cluster}-registry", check=False)
            nodes.docker("volume", "rm", "-f", f"{cluster}-registry", check=False)


# --- an external registry, provider existing ------------------------------------------------


def _secret(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(api.admin.get(f"/api/v1/namespaces/{namespace}/secrets/{name}"))


@pytest.mark.parametrize("kube_api", ["standin"], indirect=True)
def test_existing_cluster_pulls_from_an_external_registry_with_the_operators_credentials(
    kube_api: Any, kubelet: Any, namespace: str, helm_bin: str, builder: Builder, tmp_path: Path
) -> None:
    binary = registry_harness.find_binary()
    assert binary is not None, "the registry binary is not provisioned"
    ref = builder.build("ext:1", {"base": os.urandom(MiB)})
    repository, tag = ref.rsplit(":", 1)
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    with registry_harness.running(binary, tmp_path / "registry") as external:
        login = base64.b64encode(b"robot:login-pass-123").decode()
        (docker_config / "config.json").write_text(
            json.dumps({"auths": {external.host: {"auth": login}}})
        )
        doc = {
            "cluster": {"provider": "existing", "context": kube_api.context},
            "images": [ref],
            "imageDelivery": {"external": {"address": f"{external.host}/lh"}},
            "releases": [
                {
                    "name": "node",
                    "chart": str(d.REPO / "charts" / "agave"),
                    "namespace": namespace,
                    "valuesFiles": [str(d.REPO / "values" / "agave" / "kind-test.yaml")],
                    "values": {
                        "image": {"repository": repository, "tag": tag},
                        "volumes": {"ledger": {"type": "emptyDir"}},
                    },
                    "images": [ref],
                    "timeout": 120,
                }
            ],
        }
        spec = d.write_spec(tmp_path, doc)
        env = {
            **kube_api.env,
            "DOCKER_CONFIG": str(docker_config),
            "LACONIC_HELM_HELM": helm_bin,
            "LACONIC_HELM_STATE": str(tmp_path / "state"),
        }
        run = d.Deployment(spec, "", env)
        first = run.run("deploy")
        assert first.code == 0, f"{first.error}\n{first.stderr}"
        step = next(s for s in first.report["steps"] if s["name"].startswith("images via"))
        (pushed,) = step["data"]["images"]
        reference = pushed["reference"]
        assert reference.startswith(f"{external.host}/lh/{repository}@sha256:")
        assert pushed["nodes"] == {}  # kubelet pulls: the driver does not reach the nodes
        assert external.manifest_digest(f"lh/{repository}", tag) == reference.rsplit("@", 1)[1]

        pull = _secret(kube_api, namespace, pullsecret.NAME)
        assert pull["type"] == "kubernetes.io/dockerconfigjson"
        auths = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))["auths"]
        assert auths[external.host]["password"] == "login-pass-123"
        pods = kube_api.admin.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {reference}
        assert all({"name": pullsecret.NAME} in p["spec"]["imagePullSecrets"] for p in pods)
        for text in (first.stdout, first.stderr):
            assert "login-pass-123" not in text and login not in text

        again = run.run("deploy")
        assert again.code == 0 and again.report["changed"] is False, again.stderr

        # Credentials from a Secret of the cluster instead: copied in; no pod restarts for it.
        other = base64.b64encode(json.dumps({"auths": {external.host: {"auth": "eDp5"}}}).encode())
        kube_api.admin.create(
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "team-pull"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": other.decode()},
            },
        )
        doc["imageDelivery"]["external"]["credentialsSecret"] = {
            "namespace": namespace,
            "name": "team-pull",
        }
        d.write_spec(tmp_path, doc)
        copied = run.run("deploy")
        assert copied.code == 0, copied.stderr
        assert [a.split(" (")[0] for a in d.actions_taken(copied.report)] == [
            f"release/node: apply-secret {namespace}/{pullsecret.NAME}"
        ]
        pull = _secret(kube_api, namespace, pullsecret.NAME)
        assert pull["data"][".dockerconfigjson"] == other.decode()

        doc["imageDelivery"]["external"]["credentialsSecret"]["name"] = "absent"
        d.write_spec(tmp_path, doc)
        missing = run.run("deploy")
        assert missing.code == 2
        assert missing.error == (
            f"imageDelivery.external.credentialsSecret: Secret {namespace}/absent does not exist"
        )


@pytest.mark.docker
def test_by_default_a_cluster_made_before_registry_mode_is_streamed_into(
    builder: Builder, tmp_path: Path
) -> None:
    from laconic_helm.errors import UserError
    from laconic_helm.images import check_images, containerd_name
    from laconic_helm.steps import ImagesSeen, Options, Prepared, RegistryStep, World

    cluster = f"lh-old-{uuid.uuid4().hex[:8]}"
    ref = builder.build("old:1", {"a": os.urandom(256 << 10)})
    try:
        nodes.create_cluster(cluster)  # containerd reading no registry host config

        def world(delivery: dict[str, object]) -> tuple[World, RegistryStep]:
            doc = {"cluster": {"name": cluster}, "images": [ref], "imageDelivery": delivery}
            spec = parse_spec(doc, source="d.yaml", base=tmp_path)
            found = tuple(asyncio.run(check_images([ref])))
            prepared = Prepared((), None, None, found)  # type: ignore[arg-type]
            reporter = Reporter("human", stream=io.StringIO())
            return World(spec, Options(), prepared, reporter, kube=object()), RegistryStep(spec)  # type: ignore[arg-type]

        made, step = world({})
        seen = asyncio.run(step.observe(made))
        assert isinstance(seen, ImagesSeen) and made.pinned == {}  # releases run it by tag
        actions = step.plan(made, seen)
        assert [(a.verb, a.target) for a in actions] == [("load-image", ref)]
        asyncio.run(step.apply(made, seen, actions))
        assert containerd_name(ref) in nodes.ctr_images(f"{cluster}-control-plane")
        assert nodes.docker("ps", "-aq", "--filter", f"name=^{cluster}-registry$").strip() == ""

        asked, step = world({"mode": "registry"})  # asked for: refused, naming the node
        with pytest.raises(UserError, match=f"node {cluster}-control-plane: its containerd"):
            asyncio.run(step.observe(asked))
    finally:
        nodes.delete_cluster(cluster)
