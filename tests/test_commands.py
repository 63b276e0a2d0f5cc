"""commands: deploy, plan and status over the whole sequence, through the real CLI, against the
harness (kind stand-in nodes with real containerd, a real Kubernetes API per cluster, real helm
3 and 4, the real charts)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from laconic_helm.helm import STOP_GRACE
from laconic_helm.releases import MIN_HELM_SECONDS
from tests.harness import deployment_under_test as d
from tests.harness import nodes, waits
from tests.harness.pytest_fixtures import KindCLI

# Its images are random bytes and its waits are made by switching the kubelet stand-in off; on
# real kind tests/test_e2e.py deploys runnable images from nothing, re-runs, plans and reads
# status and logs.
pytestmark = pytest.mark.standin_only("random-content images and a kubelet switched off")


@pytest.fixture(scope="module")
def chart_images() -> Iterator[d.Images]:
    """Local stand-ins (unique names) for the Caddy and agave images; the deploy loads them
    into the nodes, where the kubelet stand-in finds them."""
    with d.chart_images() as images:
        yield images


@dataclass
class Deployment:
    """A spec on disk plus the way to run the real CLI on it."""

    runner: d.Deployment
    images: d.Images

    @property
    def cluster(self) -> str:
        return self.runner.cluster

    def run(self, *args: str, timeout: float = 600) -> tuple[int, dict[str, Any], str]:
        """(exit code, JSON report, the error line and stderr: what a failed assert shows)."""
        done = self.runner.run(*args, timeout=timeout)
        return done.code, done.report, f"{done.error}\n{done.stderr}"


@pytest.fixture
def deployment(
    kind_cli: KindCLI, helm_bin: str, chart_images: d.Images, tmp_path: Path
) -> Deployment:
    cluster = kind_cli.new_name("dep")
    doc = d.full_spec(tmp_path, cluster, chart_images, d.make_files(tmp_path / "files", cluster))
    # No claim: this module is about the sequence, not about data (the fault suites are).
    doc["releases"][1]["values"]["volumes"] = {"ledger": {"type": "emptyDir"}}
    # The runtime agave needs on a real node (the API refuses its pods without the class).
    doc["cluster"]["highMemlock"] = True
    doc["releases"][1]["values"]["runtimeClassName"] = "high-memlock"
    spec = d.write_spec(tmp_path, doc)
    env = d.driver_env(kind_cli, tmp_path / "state", helm_bin)
    return Deployment(d.Deployment(spec, cluster, env), chart_images)


def _release_status(api: Any, namespace: str, name: str) -> list[str]:
    return d.release_statuses(api, namespace, name)


def test_deploy_from_nothing_then_rerun_changes_nothing(
    deployment: Deployment, kind_cli: KindCLI
) -> None:
    with kind_cli.kubelets():
        code, report, err = deployment.run("deploy")
        assert code == 0, err
        assert report["ok"] is True and report["changed"] is True
        steps = {s["name"]: s for s in report["steps"]}
        assert steps[f"cluster {deployment.cluster}"]["status"] == "changed"
        assert steps["release caddy-ingress"]["status"] == "changed"
        assert steps["release agave"]["status"] == "changed"

        api = kind_cli.api(deployment.cluster)
        runtime = api.harness.get("/apis/node.k8s.io/v1/runtimeclasses/high-memlock")
        assert runtime["handler"] == "high-memlock"
        assert _release_status(api, "caddy-system", "caddy-ingress") == ["deployed"]
        assert _release_status(api, "agave", "agave") == ["deployed"]
        node = f"{deployment.cluster}-control-plane"
        held = nodes.ctr_images(node)
        for ref in deployment.images.refs:
            assert f"docker.io/{ref}" in held

        mark = api.mark()
        code, report, err = deployment.run("deploy")
        assert code == 0, err
        assert report["changed"] is False
        assert api.writes_since(mark) == []
        images_step = next(s for s in report["steps"] if s["name"].startswith("images"))
        assert all(i["bytes_sent"] == 0 for i in images_step["data"]["images"])
        assert _release_status(api, "agave", "agave") == ["deployed"]


def test_plan_and_status_read_only(deployment: Deployment, kind_cli: KindCLI) -> None:
    code, report, err = deployment.run("plan")
    assert code == 0, err
    assert f"cluster: create-cluster {deployment.cluster}" in " ".join(report["actions"])
    assert "cluster: create-runtime-class high-memlock (handler high-memlock)" in report["actions"]
    assert kind_cli.clusters().count(deployment.cluster) == 0  # plan created nothing

    with kind_cli.kubelets():
        assert deployment.run("deploy")[0] == 0
    code, report, err = deployment.run("plan")
    assert code == 0, err
    assert report["actions"] == []
    code, report, err = deployment.run("status")
    assert code == 0, err
    assert report["cluster"]["exists"] is True
    assert [r["status"] for r in report["releases"]] == ["deployed", "deployed"]
    # Pod logs come from a kubelet, which the stand-in lacks: the API's refusal is one clean
    # line naming the pod (on real kind the lines themselves arrive).
    code, report, err = deployment.run("logs", "--tail", "5")
    assert code == 1, err
    assert report["error"].startswith("logs of pod agave/")
    code, report, err = deployment.run("logs", "--release", "nope")
    assert code == 2 and report["error"].startswith("--release: no release 'nope'")


# On a quiet machine the work before the first release (preflight, creating the cluster,
# loading the images) takes about 13 times a preflight-only `plan`; the deadline allows 3 times
# that, scaled from a `plan` timed just before, so it grows with the machine's load.
PLANS_BEFORE_FIRST_RELEASE = 40


def _deadline_inside_first_release(deployment: Deployment) -> float:
    """A --deadline that falls inside caddy-ingress's helm wait, from a measured `plan`; the
    release's own helm timeout is set past it, so the deadline stops helm, not helm itself."""
    (code, _, err), plan_seconds = waits.timed(lambda: deployment.run("plan"))
    assert code == 0, err
    deadline = STOP_GRACE + MIN_HELM_SECONDS + PLANS_BEFORE_FIRST_RELEASE * plan_seconds
    doc = yaml.safe_load(deployment.runner.spec.read_text())
    doc["releases"][0]["timeout"] = math.ceil(deadline)
    deployment.runner.spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return deadline


def test_deadline_stops_cleanly_and_next_run_completes(
    deployment: Deployment, kind_cli: KindCLI
) -> None:
    # Without the kubelet stand-in nothing becomes ready, so helm --wait can only time out:
    # the deadline must stop it first, with the release recorded failed, never pending.
    deadline = _deadline_inside_first_release(deployment)
    code, report, err = deployment.run(
        "deploy", "--deadline", f"{deadline:.0f}", timeout=2 * deadline
    )
    assert code == 3, err
    assert "re-run to continue" in report["error"]
    assert "caddy-ingress" in report["error"], f"--deadline {deadline:.0f} fell short: {err}"
    api = kind_cli.api(deployment.cluster)
    statuses = _release_status(api, "caddy-system", "caddy-ingress")
    assert statuses and not any(s.startswith("pending") for s in statuses)

    with kind_cli.kubelets():
        code, report, err = deployment.run("deploy")
    assert code == 0, err
    assert _release_status(api, "caddy-system", "caddy-ingress")[-1] == "deployed"
    assert _release_status(api, "agave", "agave")[-1] == "deployed"


@pytest.mark.docker
def test_status_and_down_say_there_is_no_cluster(
    kind_cli: KindCLI, chart_images: d.Images, tmp_path: Path
) -> None:
    cluster = kind_cli.new_name("absent")  # never created
    doc = d.full_spec(tmp_path, cluster, chart_images, d.make_files(tmp_path / "files", cluster))
    runner = d.Deployment(
        d.write_spec(tmp_path, doc), cluster, d.driver_env(kind_cli, tmp_path / "state", "helm")
    )
    status = runner.run("status")
    assert status.code == 0, status.stderr
    assert status.report["cluster"]["exists"] is False
    assert f"cluster {cluster}: does not exist" in status.stderr
    assert "0 nodes" not in status.stderr
    down = runner.run("down")
    assert down.code == 0, down.stderr
    assert f"cluster {cluster} does not exist: nothing to uninstall" in down.stderr
    assert cluster not in kind_cli.clusters()


def _planned(deployment: Deployment) -> list[str]:
    code, report, err = deployment.run("plan")
    assert code == 0, err
    return list(report["actions"])


def test_plan_lists_exactly_the_actions_the_next_deploy_takes(
    deployment: Deployment, kind_cli: KindCLI, tmp_path: Path
) -> None:
    """For each state, `plan` then `deploy`: one list of steps plans both, so the deploy's
    reported actions are the plan's, line for line (what each was done to, and why)."""
    node = f"{deployment.cluster}-control-plane"
    spec_file = deployment.runner.spec
    doc = yaml.safe_load(spec_file.read_text())

    def changed_state(what: str) -> None:
        if what == "values":  # a values edit: both releases' digests move
            doc["releases"][0]["values"].setdefault("podAnnotations", {})["edit"] = "1"
            spec_file.write_text(yaml.safe_dump(doc))
        elif what == "image gone from the node":
            nodes.docker("exec", node, "ctr", "-n", "k8s.io", "images", "rm",
                         f"docker.io/{deployment.images.refs[0]}")  # fmt: skip
        elif what == "secret deleted":
            kind_cli.api(deployment.cluster).harness.delete(
                f"/api/v1/namespaces/agave/secrets/{d.IDENTITY_SECRET}"
            )
        elif what == "releases uninstalled":
            code, _, err = deployment.run("down")
            assert code == 0, err

    seen: dict[str, list[str]] = {}
    with kind_cli.kubelets():
        for state in (
            "no cluster",
            "converged",
            "values",
            "image gone from the node",
            "secret deleted",
            "releases uninstalled",
        ):
            changed_state(state)
            planned = _planned(deployment)
            code, report, err = deployment.run("deploy")
            assert code == 0, f"{state}: {err}"
            assert d.actions_taken(report) == planned, state
            seen[state] = planned
    verbs = {line.split(": ", 1)[1].split()[0] for lines in seen.values() for line in lines}
    assert seen["converged"] == []
    # The states reach every kind of change a plain deploy makes.
    assert verbs >= {
        "create-cluster",
        "create-runtime-class",
        "load-image",
        "create-namespace",
        "apply-secret",
        "upgrade-release",
    }, verbs
    assert any("upgrade-release" in line and "upgrade from" in line for line in seen["values"])
    gone = seen["image gone from the node"]
    assert any(line.startswith(("images: load-image", "images: retag-image")) for line in gone), (
        gone
    )
    assert any("apply-secret agave/" in line for line in seen["secret deleted"])
