"""A small JSON client for the Kubernetes API, enough for the harness's own needs.

The harness registers nodes, plays the kubelet, places audit barriers and inspects objects. It
talks HTTP directly so that it starts in milliseconds (the kind stand-in is a short-lived
process) and so that what it sends is obvious when a test fails.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"

# The collection of each kind the harness creates or reads back, and the cluster-scoped ones.
PLURALS = {
    "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps",
    "Secret": "secrets", "Service": "services", "Deployment": "deployments",
    "StatefulSet": "statefulsets", "DaemonSet": "daemonsets", "Job": "jobs",
    "CronJob": "cronjobs", "Ingress": "ingresses", "Role": "roles", "RoleBinding": "rolebindings",
    "PersistentVolumeClaim": "persistentvolumeclaims", "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings", "IngressClass": "ingressclasses",
    "PersistentVolume": "persistentvolumes", "RuntimeClass": "runtimeclasses",
}  # fmt: skip
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass",
                 "PersistentVolume", "RuntimeClass"}  # fmt: skip


def collection_path(obj: JSON) -> str:
    """The API path to POST `obj` to, from its apiVersion, kind and metadata.namespace."""
    version = obj["apiVersion"]
    base = f"/apis/{version}" if "/" in version else f"/api/{version}"
    namespace = obj["metadata"].get("namespace")
    if namespace and obj["kind"] not in CLUSTER_KINDS:
        base = f"{base}/namespaces/{namespace}"
    return f"{base}/{PLURALS[obj['kind']]}"


class ApiError(Exception):
    """A non-success answer from the API, with the Status object's reason and message."""

    def __init__(self, method: str, path: str, status: int, body: JSON | str) -> None:
        self.status = status
        self.body = body
        if isinstance(body, dict):
            self.reason = str(body.get("reason", ""))
            self.message = str(body.get("message", ""))
        else:
            self.reason = ""
            self.message = body[:500]
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.message}")


@dataclass(frozen=True)
class Credentials:
    """Where the API is and who we are, as a kubeconfig context states it."""

    server: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_kubeconfig(cls, text: str, context: str | None = None) -> Credentials:
        doc = yaml.safe_load(text)
        name = context or doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])

        def inline_or_file(entry: JSON, key: str) -> bytes:
            if f"{key}-data" in entry:
                return base64.b64decode(entry[f"{key}-data"])
            return Path(entry[key]).read_bytes()

        return cls(
            server=cluster["server"],
            ca_pem=inline_or_file(cluster, "certificate-authority"),
            cert_pem=inline_or_file(user, "client-certificate"),
            key_pem=inline_or_file(user, "client-key"),
        )


class Client:
    """Blocking JSON requests against one API server with one client certificate."""

    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(credentials.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.timeout = timeout
        self.context = ssl.create_default_context(cadata=credentials.ca_pem.decode())
        with tempfile.TemporaryDirectory() as tmp:
            # load_cert_chain reads only files; the key stays on disk for an instant.
            cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert.write_bytes(credentials.cert_pem)
            key.write_bytes(credentials.key_pem)
            key.chmod(0o600)
            self.context.load_cert_chain(cert, key)

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> Client:
        return cls(Credentials.from_kubeconfig(path.read_text(), context))

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> JSON:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout or self.timeout
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            all_headers = {"Accept": "application/json", **(headers or {})}
            if payload is not None:
                all_headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=all_headers)
            response = conn.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            conn.close()
        try:
            parsed: JSON | str = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            parsed = raw
        if response.status >= 400:
            raise ApiError(method, path, response.status, parsed)
        return parsed if isinstance(parsed, dict) else {"text": parsed}

    def get(self, path: str) -> JSON:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> JSON | None:
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, obj: JSON) -> JSON:
        return self.request("POST", path, obj)

    def patch(self, path: str, patch: JSON, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, patch, content_type=content_type)

    def delete(self, path: str, grace_seconds: int | None = None) -> None:
        """Deletes the object; absent counts as deleted."""
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        try:
            self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def ready(self) -> bool:
        """Whether the server answers /readyz with ok (any failure to connect counts as no)."""
        try:
            return self.request("GET", "/readyz", timeout=5).get("text") == "ok"
        except (OSError, ApiError, http.client.HTTPException):
            return False
