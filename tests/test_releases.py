"""Releases: every repair/adoption/skip decision as a table over
hand-built states (unit), the helm adapter with real helm 3 and 4 (helm)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from laconic_helm import kube, releases, spec
from laconic_helm.desired import (
    DIGEST_ANNOTATION,
    DesiredRelease,
    desired_release,
)
from laconic_helm.errors import DeadlineExceeded, ReleaseError
from laconic_helm.helm import STOP_GRACE
from laconic_helm.helm import connect as helm_connect
from laconic_helm.helm import live_helm_pids as helm_live_pids
from laconic_helm.releases import ObservedObject, ReleaseState, Revision
from tests.harness import laconic_so
from tests.harness.client import collection_path
from tests.harness.waits import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

MINI = Path(__file__).parent / "charts" / "mini"
DIGEST = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64


def _record(status: str, description: str = "", config: dict | None = None) -> dict:
    return {
        "data": {
            "release": kube.encode_release(
                {
                    "version": 4,
                    "info": {"status": status, "description": description},
                    "config": config or {},
                }
            )
        },
        "metadata": {"name": "sh.helm.release.v1.mini.v4"},
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("secret", "digest"),
    [
        (_record("deployed", f"laconic-helm digest={DIGEST}"), DIGEST),
        (
            _record(
                "deployed",
                "Rollback to 2",
                {"podAnnotations": {DIGEST_ANNOTATION: OLD}},
            ),
            OLD,
        ),
        (_record("deployed", "Install complete"), None),
        (_record("failed", 'Upgrade "mini" failed: context canceled'), None),
    ],
    ids=["description", "after-rollback", "by-hand", "failed"],
)
def test_revision_digest_comes_from_description_then_values(secret: dict, digest: str) -> None:
    revision = releases.revision_from_secret(secret)
    assert revision.number == 4
    assert revision.digest == digest
    assert revision.secret == "sh.helm.release.v1.mini.v4"


# -- planning ---------------------------------------------------------------------------------


def _desired(*, secrets: tuple[kube.SecretData, ...] = ()) -> DesiredRelease:
    return DesiredRelease("mini", "apps", MINI, {}, DIGEST, secrets)


def _state(
    *statuses: str,
    digest: str | None = DIGEST,
    ns: bool = True,
    secrets: dict[str, str] | None = None,
    existing: tuple[ObservedObject, ...] = (),
    rendered: tuple[kube.ObjectRef, ...] = (),
    busy: tuple[int, ...] = (),
) -> ReleaseState:
    revisions = tuple(
        Revision(i, s, digest=digest if s in ("deployed", "superseded") else None, secret=f"v{i}")
        for i, s in enumerate(statuses, start=1)
    )
    return ReleaseState("mini", "apps", ns, revisions, secrets or {}, rendered, existing, busy)


def _verbs(actions: list) -> list[tuple[str, str]]:
    return [(a.verb, a.detail) for a in actions]


UPGRADE_NEW = ("upgrade-release", "install, digest aaaaaaaaaaaa")
UP_TO_DATE_1 = ("up-to-date", "revision 1, digest aaaaaaaaaaaa")


def _unlock(n: int, status: str) -> tuple[str, str]:
    return ("unlock-release", f"revision {n} {status} -> failed (no helm is working on it)")


def _upgrade_from(n: int, status: str) -> tuple[str, str]:
    return ("upgrade-release", f"upgrade from revision {n} ({status}), digest aaaaaaaaaaaa")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (_state(ns=False), [("create-namespace", ""), UPGRADE_NEW]),
        (_state(), [UPGRADE_NEW]),
        (_state("superseded", "deployed"), [("up-to-date", "revision 2, digest aaaaaaaaaaaa")]),
        (_state("deployed", digest=OLD), [_upgrade_from(1, "deployed")]),
        (_state("deployed", digest=None), [_upgrade_from(1, "deployed")]),
        (_state("deployed", "failed"), [_upgrade_from(2, "failed")]),
        (_state("failed"), [_upgrade_from(1, "failed")]),
        (_state("pending-install"), [_unlock(1, "pending-install"), _upgrade_from(1, "failed")]),
        (
            _state("deployed", "pending-upgrade"),
            [_unlock(2, "pending-upgrade"), _upgrade_from(2, "failed")],
        ),
        (
            _state("superseded", "deployed", "pending-rollback"),
            [_unlock(3, "pending-rollback"), _upgrade_from(3, "failed")],
        ),
        (
            _state("superseded", "uninstalling"),
            [("uninstall-release", "finish the interrupted uninstall of revision 2"), UPGRADE_NEW],
        ),
        (_state("uninstalled"), [UPGRADE_NEW]),
        (_state("deployed", busy=(4242,)), [UP_TO_DATE_1]),
    ],
    ids=[
        "absent-no-namespace",
        "absent",
        "deployed-same-digest",
        "deployed-other-digest",
        "deployed-by-hand",
        "failed-after-deployed",
        "failed-only",
        "pending-install",
        "pending-upgrade",
        "pending-rollback",
        "uninstalling",
        "uninstalled-kept-history",
        "deployed-while-some-helm-runs",
    ],
)
def test_plan_recovers_and_skips(state: ReleaseState, expected: list) -> None:
    assert _verbs(releases.plan_release(_desired(), state)) == expected


@pytest.mark.unit
@pytest.mark.parametrize("status", ["pending-install", "pending-upgrade", "uninstalling"])
def test_plan_never_touches_a_release_a_live_helm_works_on(status: str) -> None:
    with pytest.raises(ReleaseError, match=r"pid 4242.*re-run"):
        releases.plan_release(_desired(), _state("deployed", status, busy=(4242,)))


SECRET = kube.SecretData("apps", "keys", {"id": b"x"})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("have", "expected"),
    [
        ("current", [UP_TO_DATE_1]),
        (
            "outdated",
            [("apply-secret", "update: content differs"), UP_TO_DATE_1],
        ),
    ],
)
def test_plan_rewrites_only_secrets_that_differ(have: str, expected: list) -> None:
    state = _state("deployed", secrets={"keys": have})
    assert _verbs(releases.plan_release(_desired(secrets=(SECRET,)), state)) == expected


@pytest.mark.unit
def test_plan_creates_namespace_and_secrets_before_the_install() -> None:
    actions = releases.plan_release(_desired(secrets=(SECRET,)), _state(ns=False))
    assert [(a.verb, a.target) for a in actions] == [
        ("create-namespace", "apps"),
        ("apply-secret", "apps/keys"),
        ("upgrade-release", "apps/mini"),
    ]


SA = kube.ObjectRef("v1", "ServiceAccount", "caddy-ingress-controller", "apps")
ROLE = kube.ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "caddy-ingress-controller")
NS = kube.ObjectRef("v1", "Namespace", "apps")


def _owned(ref: kube.ObjectRef, managed_by: str | None, release: str | None, ns: str | None):
    return ObservedObject(ref, kube.Owner(managed_by, release, ns))


@pytest.mark.unit
def test_plan_adopts_unowned_objects_before_the_upgrade() -> None:
    existing = (
        _owned(SA, None, None, None),
        _owned(ROLE, "Helm", None, None),
        _owned(kube.ObjectRef("v1", "ConfigMap", "mine", "apps"), "Helm", "mini", "apps"),
    )
    actions = releases.plan_release(_desired(), _state(existing=existing))
    assert [(a.verb, a.target) for a in actions] == [
        ("adopt-object", "ServiceAccount apps/caddy-ingress-controller"),
        ("adopt-object", "ClusterRole caddy-ingress-controller"),
        ("upgrade-release", "apps/mini"),
    ]


@pytest.mark.unit
def test_plan_objects_names_what_the_upgrade_creates_and_updates() -> None:
    mine = kube.ObjectRef("v1", "ConfigMap", "mine", "apps")
    new = kube.ObjectRef("apps/v1", "Deployment", "mini", "apps")
    existing = (_owned(SA, None, None, None), _owned(mine, "Helm", "mini", "apps"))
    state = _state(existing=existing, rendered=(SA, mine, new))
    assert releases.plan_objects(_desired(), state) == [
        "release/mini: update-object ConfigMap apps/mine (the release's own)",
        "release/mini: create-object Deployment apps/mini (absent)",
    ]  # the ServiceAccount is plan_release's adopt-object


@pytest.mark.unit
@pytest.mark.parametrize("statuses", [(), ("deployed", "pending-upgrade")], ids=["new", "stuck"])
def test_plan_refuses_to_steal_from_another_release_before_any_write(statuses: tuple) -> None:
    existing = (_owned(SA, None, None, None), _owned(ROLE, "Helm", "other", "elsewhere"))
    state = _state(*statuses, digest=OLD, ns=False, existing=existing)
    with pytest.raises(ReleaseError) as caught:
        releases.plan_release(_desired(secrets=(SECRET,)), state)
    assert caught.value.message == (
        "release mini: ClusterRole caddy-ingress-controller belongs to release elsewhere/other; "
        "refusing to take it"
    )


@pytest.mark.unit
def test_objects_no_deployed_revision_applied_yet_are_being_adopted() -> None:
    config = kube.ObjectRef("v1", "ConfigMap", "mine", "apps")
    existing = (_owned(SA, "Helm", "mini", "apps"), _owned(config, "Helm", "mini", "apps"))
    applied = frozenset({kube.ObjectRef("v1beta1", "ConfigMap", "mine", "apps").key})
    state = ReleaseState(
        "mini", "apps", True, (Revision(1, "deployed"),), existing=existing, applied=applied
    )
    assert state.adopting == (SA,)


@pytest.mark.unit
def test_plan_creates_a_rendered_namespace_owned_by_the_release() -> None:
    actions = releases.plan_release(_desired(), _state(ns=False, rendered=(NS, SA)))
    assert _verbs(actions)[0] == ("create-namespace", "owned by the release: the chart renders it")


@pytest.mark.unit
def test_plan_adopts_an_existing_rendered_namespace() -> None:
    state = _state(rendered=(NS,), existing=(_owned(NS, "laconic-helm", None, None),))
    assert [a.verb for a in releases.plan_release(_desired(), state)] == [
        "adopt-object",
        "upgrade-release",
    ]


# -- the helm adapter, with real helm 3 and 4 --------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


# -- against the stand-in API, with real helm 3 and 4 -----------------------------------------

# A node selector no node has: the Deployment's pod never starts, so `--wait` keeps waiting.
HANG = {"nodeSelector": {"laconic-helm.test/nowhere": "true"}}
HANG_FLAGS = ("--set-string", "nodeSelector.laconic-helm\\.test/nowhere=true")


class World:
    """One test's release and namespace (unique names) on the shared stand-in API."""

    def __init__(self, api: Any, helm_bin: str) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.api = api
        self.helm_bin = helm_bin
        self.name = f"mini-{suffix}"
        self.ns = f"apps-{suffix}"
        self.suffix = suffix
        self.kube = kube.Kube.connect(api.kubeconfig, api.context)
        self.helm = asyncio.run(
            helm_connect(kubeconfig=api.kubeconfig, context=api.context, executable=helm_bin)
        )

    def desired(
        self, values: dict[str, Any] | None = None, *, wait: bool = False, **extra: Any
    ) -> DesiredRelease:
        rel = spec.Release(
            name=self.name,
            chart=str(MINI),
            namespace=self.ns,
            values=values or {},
            wait=wait,
            timeout=300,
            **extra,
        )
        return desired_release(rel)

    def ensure(self, desired: DesiredRelease, **kw: Any) -> releases.ReleaseOutcome:
        return asyncio.run(releases.ensure_release(self.kube, self.helm, desired, **kw))

    def revisions(self) -> list[tuple[int, str]]:
        secrets = asyncio.run(self.kube.list_release_secrets(self.ns, self.name))
        found = [releases.revision_from_secret(s) for s in secrets]
        return [(r.number, r.status) for r in sorted(found, key=lambda r: r.number)]

    def latest(self) -> str:
        revisions = self.revisions()
        return revisions[-1][1] if revisions else "absent"

    def helm_cli(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [self.helm_bin, *args, "-n", self.ns, "--kubeconfig", str(self.api.kubeconfig)]
        if self.api.context:
            argv += ["--kube-context", self.api.context]
        env = {**os.environ, "HELM_DRIVER": "secret"}
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def kill_when(self, child: subprocess.Popen[bytes], status: str) -> None:
        """SIGKILLs `child` (helm) once the release's newest revision has `status`."""

        def reached() -> bool:
            assert child.poll() is None, f"helm exited early: {child.stderr.read().decode()}"
            return self.latest() == status

        wait_until(reached, f"the release's newest revision to be {status}", interval=0.1)
        child.kill()
        child.wait()

    def get(self, path: str) -> dict[str, Any] | None:
        return self.api.harness.get_or_none(path)


@pytest.fixture
def world(kube_api: Any, helm_bin: str) -> Iterator[World]:
    made = World(kube_api, helm_bin)
    yield made
    kube_api.delete_namespace(made.ns)
    kube_api.harness.delete(
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/caddy-ingress-controller-{made.suffix}"
    )


def _verbs_of(outcome: releases.ReleaseOutcome) -> list[str]:
    return [a.verb for a in outcome.actions]


@pytest.mark.apiserver
@pytest.mark.helm
def test_install_then_rerun_makes_no_upgrade_and_no_write(world: World) -> None:
    desired = world.desired({"config": {"greeting": "one"}})
    first = world.ensure(desired)
    assert _verbs_of(first) == ["create-namespace", "upgrade-release"]
    assert world.revisions() == [(1, "deployed")]
    deployment = world.get(f"/apis/apps/v1/namespaces/{world.ns}/deployments/{world.name}")
    assert deployment is not None
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[DIGEST_ANNOTATION] == desired.digest

    mark = world.api.mark()
    again = world.ensure(world.desired({"config": {"greeting": "one"}}))
    assert _verbs_of(again) == ["up-to-date"]
    assert not again.changed
    assert world.api.writes_since(mark) == []
    assert world.revisions() == [(1, "deployed")]


@pytest.mark.apiserver
@pytest.mark.helm
def test_an_install_waits_until_the_pods_are_ready(world: World, kubelet: Any) -> None:
    outcome = world.ensure(world.desired(wait=True))
    assert _verbs_of(outcome) == ["create-namespace", "upgrade-release"]
    assert world.revisions() == [(1, "deployed")]
    workloads = asyncio.run(world.kube.list_workloads(world.ns))
    assert workloads == [kube.Workload("Deployment", world.name, 1, 1)]


@pytest.mark.apiserver
@pytest.mark.helm
def test_a_changed_input_makes_exactly_one_upgrade(world: World) -> None:
    world.ensure(world.desired({"config": {"greeting": "one"}}))
    changed = world.ensure(world.desired({"config": {"greeting": "two"}}))
    assert _verbs_of(changed) == ["upgrade-release"]
    assert changed.revision == 2
    again = world.ensure(world.desired({"config": {"greeting": "two"}}))
    assert _verbs_of(again) == ["up-to-date"]
    assert world.revisions() == [(1, "superseded"), (2, "deployed")]
    config = world.get(f"/api/v1/namespaces/{world.ns}/configmaps/{world.name}-config")
    assert config is not None and config["data"]["greeting"] == "two"


@pytest.mark.apiserver
@pytest.mark.helm
def test_secrets_are_written_before_the_release_and_only_when_changed(
    world: World, tmp_path: Path
) -> None:
    key = tmp_path / "identity.json"
    key.write_bytes(b"[7,7,7,7]")
    key_spec = [spec.SecretSpec(name="keys", files={"identity.json": key})]
    first = world.ensure(world.desired(secrets=key_spec))
    assert _verbs_of(first) == ["create-namespace", "apply-secret", "upgrade-release"]
    secret = world.get(f"/api/v1/namespaces/{world.ns}/secrets/keys")
    assert secret is not None
    assert base64.b64decode(secret["data"]["identity.json"]) == b"[7,7,7,7]"
    assert secret["metadata"]["labels"][kube.MANAGED_BY] == kube.DRIVER
    record = kube.decode_release(
        asyncio.run(world.kube.list_release_secrets(world.ns, world.name))[0]
    )
    assert "7,7,7,7" not in json.dumps(record)
    assert base64.b64encode(b"[7,7,7,7]").decode() not in json.dumps(record)

    mark = world.api.mark()
    assert _verbs_of(world.ensure(world.desired(secrets=key_spec))) == ["up-to-date"]
    assert world.api.writes_since(mark) == []

    key.write_bytes(b"[8]")
    changed = world.ensure(world.desired(secrets=key_spec))
    assert _verbs_of(changed) == ["apply-secret", "upgrade-release"]
    secret = world.get(f"/api/v1/namespaces/{world.ns}/secrets/keys")
    assert secret is not None and base64.b64decode(secret["data"]["identity.json"]) == b"[8]"


def _leave_pending_install(world: World) -> None:
    child = world.helm_cli(
        "upgrade", "--install", world.name, str(MINI), "--create-namespace", "--wait", *HANG_FLAGS
    )
    world.kill_when(child, "pending-install")


def _leave_pending_upgrade(world: World) -> None:
    world.ensure(world.desired(HANG))
    child = world.helm_cli(
        "upgrade", world.name, str(MINI), "--wait", *HANG_FLAGS, "--set", "config.greeting=x"
    )
    world.kill_when(child, "pending-upgrade")


def _leave_pending_rollback(world: World) -> None:
    world.ensure(world.desired(HANG))
    world.ensure(world.desired({**HANG, "config": {"greeting": "two"}}))
    child = world.helm_cli("rollback", world.name, "1", "--wait")
    world.kill_when(child, "pending-rollback")


def _leave_uninstalling(world: World) -> None:
    world.ensure(world.desired({"holdDeletion": True, "keptData": {"enabled": True}}))
    child = world.helm_cli("uninstall", world.name, "--wait")
    world.kill_when(child, "uninstalling")
    # What blocked the uninstall goes away; the next deploy must finish it.
    world.api.harness.patch(
        f"/api/v1/namespaces/{world.ns}/configmaps/{world.name}-config",
        {"metadata": {"finalizers": None}},
    )


@pytest.mark.apiserver
@pytest.mark.helm
@pytest.mark.parametrize(
    ("leave", "first_verb"),
    [
        (_leave_pending_install, "unlock-release"),
        (_leave_pending_upgrade, "unlock-release"),
        (_leave_pending_rollback, "unlock-release"),
        (_leave_uninstalling, "uninstall-release"),
    ],
    ids=["pending-install", "pending-upgrade", "pending-rollback", "uninstalling"],
)
def test_a_helm_killed_mid_operation_is_repaired_by_the_next_deploy(
    world: World, leave: Any, first_verb: str
) -> None:
    leave(world)
    stuck = world.revisions()
    desired = world.desired({**HANG, "keptData": {"enabled": True}})
    outcome = world.ensure(desired)
    assert _verbs_of(outcome)[0] == first_verb
    assert _verbs_of(outcome)[-1] == "upgrade-release"
    assert world.latest() == "deployed"
    if first_verb == "unlock-release":
        # History is kept: the stuck revision is still there, no longer pending.
        pending_number = stuck[-1][0]
        assert dict(world.revisions())[pending_number] in ("failed", "superseded")
        assert len(world.revisions()) == len(stuck) + 1
    else:
        kept = world.get(f"/api/v1/namespaces/{world.ns}/configmaps/{world.name}-data")
        assert kept is not None and kept["data"] == {"ledger": "precious"}
    assert _verbs_of(world.ensure(desired)) == ["up-to-date"]


@pytest.mark.apiserver
@pytest.mark.helm
@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_stopping_during_wait_leaves_failed_never_pending(world: World, stop: str) -> None:
    desired = world.desired(HANG, wait=True)

    async def interrupted() -> None:
        if stop == "deadline":
            budget = STOP_GRACE + releases.MIN_HELM_SECONDS + 3
            await releases.ensure_release(
                world.kube, world.helm, desired, deadline=time.monotonic() + budget
            )
            return
        task = asyncio.create_task(releases.ensure_release(world.kube, world.helm, desired))
        while not await world.kube.list_release_secrets(world.ns, world.name):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # well inside `--wait`
        task.cancel()
        await task

    started = time.monotonic()
    expected = DeadlineExceeded if stop == "deadline" else asyncio.CancelledError
    with pytest.raises(expected):
        asyncio.run(interrupted())
    if stop == "deadline":
        assert time.monotonic() - started < STOP_GRACE + releases.MIN_HELM_SECONDS + 3 + 1
    assert world.revisions() == [(1, "failed")]
    assert helm_live_pids(world.name, world.ns) == ()
    retried = world.ensure(world.desired(HANG))
    assert _verbs_of(retried) == ["upgrade-release"]
    assert world.latest() == "deployed"


@pytest.mark.apiserver
@pytest.mark.helm
def test_a_release_a_live_helm_works_on_is_left_alone(world: World) -> None:
    child = world.helm_cli(
        "upgrade", "--install", world.name, str(MINI), "--create-namespace", "--wait", *HANG_FLAGS
    )
    try:
        # Once its last object (the Deployment) exists, helm only waits: no more writes.
        deployment = f"/apis/apps/v1/namespaces/{world.ns}/deployments/{world.name}"
        wait_until(
            lambda: world.latest() == "pending-install" and world.get(deployment) is not None,
            "helm to create the Deployment of its pending install",
            interval=0.1,
        )
        mark = world.api.mark()
        with pytest.raises(ReleaseError, match=rf"pid {child.pid}\)? is still working on it"):
            world.ensure(world.desired(HANG), busy_wait=1)
        assert child.poll() is None
        assert world.api.writes_since(mark) == []
    finally:
        child.kill()
        child.wait()


def _create(world: World, path: str, obj: dict[str, Any]) -> None:
    world.api.harness.create(path, obj)


def _laconic_so_objects(world: World, role: str) -> None:
    """laconic-so's Caddy ServiceAccount and ClusterRole, as its create-only install leaves
    them (no Helm ownership), in the test's namespace and with the ClusterRole named `role`."""
    _create(world, "/api/v1/namespaces", {"metadata": {"name": world.ns}})
    for obj in laconic_so.caddy_manifests():
        if obj["kind"] == "ServiceAccount":
            obj["metadata"]["namespace"] = world.ns
        elif obj["kind"] == "ClusterRole":
            obj["metadata"]["name"] = role
        else:
            continue
        _create(world, collection_path(obj), obj)


def _adopting_values(role: str) -> dict[str, Any]:
    return {
        "serviceAccount": {"name": "caddy-ingress-controller"},
        "clusterRole": {"enabled": True, "name": role},
    }


@pytest.mark.apiserver
@pytest.mark.helm
def test_objects_left_by_a_create_only_installer_are_adopted(world: World) -> None:
    role = f"caddy-ingress-controller-{world.suffix}"
    _laconic_so_objects(world, role)
    outcome = world.ensure(world.desired(_adopting_values(role)))
    assert [(a.verb, a.target) for a in outcome.actions] == [
        ("adopt-object", f"ServiceAccount {world.ns}/caddy-ingress-controller"),
        ("adopt-object", f"ClusterRole {role}"),
        ("upgrade-release", f"{world.ns}/{world.name}"),
    ]
    assert world.latest() == "deployed"
    cluster_role = world.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")
    assert cluster_role is not None
    assert cluster_role["rules"][0]["resources"] == ["configmaps"]  # the chart's, not the old
    assert kube.owner_of(cluster_role).is_release(world.name, world.ns)
    mark = world.api.mark()
    assert _verbs_of(world.ensure(world.desired(_adopting_values(role)))) == ["up-to-date"]
    assert world.api.writes_since(mark) == []


@pytest.mark.apiserver
@pytest.mark.helm
def test_an_adopted_deployment_takes_the_charts_strategy(world: World) -> None:
    # The installer's Deployment has the API's default RollingUpdate; the chart wants Recreate.
    # Helm 4's server-side apply would keep `rollingUpdate` beside it, which the API refuses.
    labels = {"app.kubernetes.io/name": "mini", "app.kubernetes.io/instance": world.name}
    _create(world, "/api/v1/namespaces", {"metadata": {"name": world.ns}})
    _create(
        world,
        f"/apis/apps/v1/namespaces/{world.ns}/deployments",
        {
            "metadata": {"name": world.name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "mini", "image": "old:1"}]},
                },
            },
        },
    )
    outcome = world.ensure(world.desired({"strategy": {"type": "Recreate"}}))
    assert ("adopt-object", f"Deployment {world.ns}/{world.name}") in [
        (a.verb, a.target) for a in outcome.actions
    ]
    deployment = world.get(f"/apis/apps/v1/namespaces/{world.ns}/deployments/{world.name}")
    assert deployment is not None
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]] == [
        "registry.k8s.io/pause:3.10"
    ]
    changed = world.ensure(world.desired({"strategy": {"type": "Recreate"}, "replicaCount": 2}))
    assert _verbs_of(changed) == ["upgrade-release"]  # later upgrades apply as usual


@pytest.mark.apiserver
@pytest.mark.helm
def test_an_adoption_interrupted_before_the_upgrade_completes_next_time(world: World) -> None:
    role = f"caddy-ingress-controller-{world.suffix}"
    _laconic_so_objects(world, role)
    desired = world.desired(_adopting_values(role))

    async def adopt_only() -> None:
        state = await releases.observe_release(world.kube, world.helm, desired)
        actions = [a for a in releases.plan_release(desired, state) if a.verb == "adopt-object"]
        await releases.apply_release(world.kube, world.helm, desired, state, actions)

    asyncio.run(adopt_only())
    assert _verbs_of(world.ensure(desired)) == ["upgrade-release"]
    assert world.latest() == "deployed"


@pytest.mark.apiserver
@pytest.mark.helm
def test_an_object_of_another_release_is_never_taken(world: World) -> None:
    _create(world, "/api/v1/namespaces", {"metadata": {"name": world.ns}})
    owned = {
        "name": "caddy-ingress-controller",
        "labels": {kube.MANAGED_BY: "Helm"},
        "annotations": {kube.RELEASE_NAME: "other", kube.RELEASE_NAMESPACE: "elsewhere"},
    }
    _create(world, f"/api/v1/namespaces/{world.ns}/serviceaccounts", {"metadata": owned})
    mark = world.api.mark()
    with pytest.raises(ReleaseError) as caught:
        world.ensure(world.desired({"serviceAccount": {"name": "caddy-ingress-controller"}}))
    assert caught.value.message == (
        f"release {world.name}: ServiceAccount {world.ns}/caddy-ingress-controller belongs to "
        "release elsewhere/other; refusing to take it"
    )
    assert world.api.writes_since(mark) == []
    assert world.revisions() == []


@pytest.mark.apiserver
@pytest.mark.helm
def test_a_chart_that_renders_its_namespace_installs_into_a_new_one(world: World) -> None:
    outcome = world.ensure(world.desired({"renderNamespace": True}))
    assert _verbs_of(outcome) == ["create-namespace", "upgrade-release"]
    namespace = world.get(f"/api/v1/namespaces/{world.ns}")
    assert namespace is not None
    assert kube.owner_of(namespace).is_release(world.name, world.ns)


@pytest.mark.apiserver
@pytest.mark.helm
def test_removing_a_release_keeps_its_data(world: World) -> None:
    world.ensure(world.desired({"keptData": {"enabled": True}}))
    removed = asyncio.run(
        releases.ensure_release_absent(world.kube, world.helm, world.name, world.ns)
    )
    assert removed
    assert world.revisions() == []
    assert world.get(f"/api/v1/namespaces/{world.ns}/configmaps/{world.name}-config") is None
    assert world.get(f"/api/v1/namespaces/{world.ns}/configmaps/{world.name}-data") is not None
    mark = world.api.mark()
    again = asyncio.run(
        releases.ensure_release_absent(world.kube, world.helm, world.name, world.ns)
    )
    assert not again
    assert world.api.writes_since(mark) == []


@pytest.mark.apiserver
@pytest.mark.helm
def test_the_seed_scenario_caddy_left_by_laconic_so_deploys_on_the_first_rerun(
    world: World,
) -> None:
    world.name, world.ns = "caddy-ingress", "caddy-system"
    values = REPO / "values" / "caddy-ingress"
    release = spec.Release(
        name="caddy-ingress",
        chart=str(REPO / "charts" / "caddy-ingress"),
        namespace="caddy-system",
        valuesFiles=[values / "kind.yaml", values / "laconic-so-adopt.yaml"],
        wait=False,
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    try:
        laconic_so.create_all(world.api.harness, laconic_so.caddy_manifests())
        outcome = world.ensure(desired_release(release))
        assert sorted(a.target for a in outcome.actions if a.verb == "adopt-object") == [
            "ClusterRole caddy-ingress-controller",
            "ClusterRoleBinding caddy-ingress-controller",
            "ConfigMap caddy-system/caddy-ingress-controller-configmap",
            "Deployment caddy-system/caddy-ingress-controller",
            "IngressClass caddy",
            "Service caddy-system/caddy-ingress-controller",
            "ServiceAccount caddy-system/caddy-ingress-controller",
        ]
        assert world.latest() == "deployed"
        mark = world.api.mark()
        assert _verbs_of(world.ensure(desired_release(release))) == ["up-to-date"]
        assert world.api.writes_since(mark) == []
    finally:
        asyncio.run(releases.ensure_release_absent(world.kube, world.helm, world.name, world.ns))
        for path in (
            f"{rbac}/clusterroles/caddy-ingress-controller",
            f"{rbac}/clusterrolebindings/caddy-ingress-controller",
            "/apis/networking.k8s.io/v1/ingressclasses/caddy",
        ):
            world.api.harness.delete(path)
        # The next run of this test (the other helm) needs the fixed namespace name again.
        world.api.delete_namespace(world.ns)
        deadline = time.monotonic() + 300  # a real cluster first stops the namespace's pods
        while world.get(f"/api/v1/namespaces/{world.ns}") is not None:
            assert time.monotonic() < deadline, f"namespace {world.ns} never went away"
            time.sleep(0.2)


@pytest.mark.apiserver
@pytest.mark.helm
def test_a_release_stuck_by_a_killed_helm_can_be_removed(world: World) -> None:
    _leave_pending_install(world)
    assert asyncio.run(releases.ensure_release_absent(world.kube, world.helm, world.name, world.ns))
    assert world.revisions() == []
