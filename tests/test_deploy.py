"""deploy: the whole sequence through the real CLI, against the harness (kind stand-in nodes with
real containerd, a real Kubernetes API per cluster, real helm 3 and 4, the real charts)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.harness import nodes
from tests.harness.fixtures import KindCLI

# Images the charts run with the overlays below; the test builds stand-ins for them locally
# (no registry here) and the deploy loads them into the nodes, where the kubelet stand-in
# finds them.
CHART_IMAGES = ("caddy/ingress:v0.2.1", "anzaxyz/agave:v2.3.13")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _build_image(ref: str, content: str) -> None:
    """A one-file image made offline (docker import of a tiny tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("marker.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    nodes.docker("import", "-", ref, input=buf.getvalue())


@pytest.fixture(scope="module")
def chart_images() -> Iterator[tuple[str, ...]]:
    for ref in CHART_IMAGES:
        _build_image(ref, f"stand-in for {ref}\n")
    yield CHART_IMAGES


@dataclass
class Deployment:
    """A spec on disk plus the way to run the real CLI on it."""

    spec: Path
    cluster: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "laconic_helm",
                "--output",
                "json",
                *args,
                "--spec",
                str(self.spec),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout), done.stderr


def _write_spec(folder: Path, cluster: str, images: tuple[str, ...], **release_values: Any) -> Path:
    values = REPO / "values"
    doc = {
        "cluster": {
            "name": cluster,
            "ports": [
                {"containerPort": 80, "hostPort": _free_port(), "listenAddress": "127.0.0.1"},
                {"containerPort": 443, "hostPort": _free_port(), "listenAddress": "127.0.0.1"},
            ],
        },
        "images": list(images),
        "releases": [
            {
                "name": "caddy-ingress",
                "chart": str(REPO / "charts" / "caddy-ingress"),
                "namespace": "caddy-system",
                "valuesFiles": [str(values / "caddy-ingress" / "kind.yaml")],
                "images": [images[0]],
                "timeout": 120,
            },
            {
                "name": "agave",
                "chart": str(REPO / "charts" / "agave"),
                "namespace": "agave",
                "valuesFiles": [str(values / "agave" / "kind-test.yaml")],
                "values": release_values,
                "images": [images[1]],
                "timeout": 120,
            },
        ],
    }
    path = folder / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def deployment(
    kind_cli: KindCLI, helm_bin: str, chart_images: tuple[str, ...], tmp_path: Path
) -> Deployment:
    cluster = kind_cli.new_name("dep")
    env = {
        **kind_cli.env,
        "LACONIC_HELM_HELM": helm_bin,
        "LACONIC_HELM_STATE": str(tmp_path / "state"),
        "PATH": os.environ["PATH"],
    }
    return Deployment(_write_spec(tmp_path, cluster, chart_images), cluster, env)


def _release_status(api: Any, namespace: str, name: str) -> list[str]:
    secrets = api.admin.get(
        f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm,name%3D{name}"
    )
    items = sorted(secrets["items"], key=lambda s: int(s["metadata"]["labels"]["version"]))
    return [s["metadata"]["labels"]["status"] for s in items]


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
        assert _release_status(api, "caddy-system", "caddy-ingress") == ["deployed"]
        assert _release_status(api, "agave", "agave") == ["deployed"]
        node = f"{deployment.cluster}-control-plane"
        held = nodes.ctr_images(node)
        for ref in CHART_IMAGES:
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


def test_deadline_stops_cleanly_and_next_run_completes(
    deployment: Deployment, kind_cli: KindCLI
) -> None:
    # Without the kubelet stand-in nothing becomes ready, so helm --wait can only time out:
    # the deadline must stop it first, with the release recorded failed, never pending.
    code, report, err = deployment.run("deploy", "--deadline", "60")
    assert code == 3, err
    assert "re-run to continue" in report["error"]
    api = kind_cli.api(deployment.cluster)
    statuses = _release_status(api, "caddy-system", "caddy-ingress")
    assert statuses and not any(s.startswith("pending") for s in statuses)

    with kind_cli.kubelets():
        code, report, err = deployment.run("deploy")
    assert code == 0, err
    assert _release_status(api, "caddy-system", "caddy-ingress")[-1] == "deployed"
    assert _release_status(api, "agave", "agave")[-1] == "deployed"
