"""KubeAPI: what a test holds of a Kubernetes API, whichever cluster stands behind it.

The session's stand-in API, a kind stand-in cluster and a real kind cluster all appear through
this one interface, so one test body runs against each: where the API is (kubeconfig,
context, server), clients for the admin and for the harness, the audit log as "writes since a
mark", throw-away namespaces, and a kubelet that a stand-in lacks and a real cluster has.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness import waits
from tests.harness.audit import AuditLog, Write
from tests.harness.client import Client
from tests.harness.kubelet import ImageCheck, Kubelet


@dataclass
class KubeAPI:
    kubeconfig: Path
    context: str
    server: str
    admin: Client  # the kubeconfig's identity: what helm and the driver act as
    harness: Client  # the harness's own identity, left out of the audit log
    audit: AuditLog
    has_image: ImageCheck | None = None  # None: no containerd behind the nodes to ask
    real_kubelet: bool = False
    startup_seconds: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing here, for subprocesses (helm, the driver)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def mark(self) -> int:
        """A point in the audit log; see writes_since."""
        return self.audit.mark()

    def writes_since(self, mark: int) -> list[Write]:
        """Create/update/patch/delete requests made since `mark` by anyone but the control
        plane's components and the harness (so: by the code under test), refused ones too."""
        return self.audit.writes_since(mark)

    @contextlib.contextmanager
    def kubelet(self) -> Iterator[Kubelet | None]:
        """Runs the kubelet stand-in for the block; a real cluster has its own (yields None)."""
        if self.real_kubelet:
            yield None
            return
        with Kubelet(self.harness, self.has_image) as running:
            yield running

    def create_namespace(self, prefix: str = "t") -> str:
        """A new namespace, returned once pods can be created in it (its `default`
        ServiceAccount exists: the ServiceAccount admission plugin refuses pods before)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.harness.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        waits.wait_until(
            lambda: self.harness.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            f"namespace {name}'s default ServiceAccount",
            interval=0.05,
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Deletes the namespace without waiting; pods bound to a node are removed at once, since
        no kubelet may be there to finish their graceful deletion."""
        self.harness.delete(f"/api/v1/namespaces/{name}")
        if self.real_kubelet:
            return
        for pod in self.harness.get(f"/api/v1/namespaces/{name}/pods")["items"]:
            self.harness.delete(
                f"/api/v1/namespaces/{name}/pods/{pod['metadata']['name']}", grace_seconds=0
            )
