"""A converged deployment for the session (registered by tests/conftest.py through
pytest_plugins): both releases deployed by the real CLI on a stand-in kind cluster of its own,
with a known identity keypair, for the suites that look at a finished deployment (concurrency,
secrets). The first deploy's output is kept: it is the run that wrote the identity Secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import deployment_under_test as dep
from tests.harness import standin
from tests.harness.api import KubeAPI
from tests.harness.kubelet import Kubelet
from tests.harness.pytest_fixtures import KindCLI


@dataclass
class Deployed:
    """The session's converged deployment and how to run the CLI on it."""

    kind: KindCLI
    root: Path
    deployment: dep.Deployment
    files: dep.SpecFiles
    images: dep.Images
    api: KubeAPI
    first: dep.Run  # the deploy that created everything (`--output json -v`)

    @property
    def cluster(self) -> str:
        return self.deployment.cluster

    @property
    def node(self) -> str:
        return f"{self.cluster}-control-plane"

    @property
    def state_dir(self) -> Path:
        return self.deployment.state_dir

    def kubelet(self) -> Kubelet:
        return Kubelet(self.api.harness, standin.has_image)


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("deployed")
    with dep.staged(root, "done") as stage:
        kind, cluster = stage.kind, stage.cluster
        spec = dep.write_spec(root, stage.doc)
        deployment = dep.Deployment(spec, cluster, dep.driver_env(kind, root / "state", "helm"))
        with dep.ledger_volumes([cluster]):
            with kind.kubelets():  # every cluster of the session: this one is made meanwhile
                first = deployment.run("-v", "deploy")
            assert first.code == 0, f"{first.error}\n{first.stderr}"
            made = Deployed(
                kind, root, deployment, stage.files, stage.images, kind.api(cluster), first
            )
            with made.kubelet():  # from now on this cluster's alone: others test without one
                yield made
