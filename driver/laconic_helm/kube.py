"""Kubernetes API access: namespaces, Secrets from files, Helm's release records, ownership
metadata and workload readiness.

The official client is synchronous, so every request runs in a worker thread with a bounded
timeout. Objects travel as plain dicts (the JSON the API speaks), which keeps one code path for
every kind a chart may render. Nothing here logs object bodies: Secrets pass through.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3

from laconic_helm.errors import ClusterError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
DRIVER = "laconic-helm"  # value of MANAGED_BY on objects this driver writes itself
HELM = "Helm"  # value of MANAGED_BY that Helm requires before it adopts an object
RELEASE_NAME = "meta.helm.sh/release-name"
RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"
FIELD_MANAGER = "laconic-helm"
RELEASE_SECRET_TYPE = "helm.sh/release.v1"

_TIMEOUT = (5.0, 30.0)  # connect, read seconds per request
_GZIP_MAGIC = b"\x1f\x8b"
T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a terminal's colour and cursor codes


@dataclass(frozen=True)
class ObjectRef:
    """Identifies one API object: namespace is None for cluster-scoped kinds."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        """Identity across API versions of the same kind (group, kind, namespace, name)."""
        return (self.group, self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Resource:
    """What discovery says about a kind: its URL plural and whether it lives in a namespace."""

    plural: str
    namespaced: bool


@dataclass(frozen=True)
class Owner:
    """Helm ownership metadata found on an object (each part None when absent)."""

    managed_by: str | None
    release: str | None
    namespace: str | None

    def is_release(self, release: str, namespace: str) -> bool:
        return self.managed_by == HELM and self.release == release and self.namespace == namespace

    def belongs_elsewhere(self, release: str, namespace: str) -> bool:
        """True when the annotations name a different release (or release namespace)."""
        return bool(
            (self.release and self.release != release)
            or (self.namespace and self.namespace != namespace)
        )


@dataclass(frozen=True)
class Workload:
    """Readiness of one Deployment, StatefulSet or DaemonSet."""

    kind: str
    name: str
    desired: int
    ready: int

    def is_ready(self) -> bool:
        return self.ready >= self.desired


@dataclass(frozen=True)
class SecretData:
    """The desired content of a Secret; the bytes stay out of repr, logs and tracebacks."""

    namespace: str
    name: str
    data: Mapping[str, bytes] = field(repr=False)
    type: str = "Opaque"

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": self.type,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY: DRIVER},
            },
            "data": {k: base64.b64encode(v).decode() for k, v in sorted(self.data.items())},
        }

    def matches(self, live: Mapping[str, Any]) -> bool:
        """True when the live Secret holds exactly this data, type and management label."""
        want = self.manifest()
        labels = (live.get("metadata") or {}).get("labels") or {}
        return (
            live.get("type", "Opaque") == want["type"]
            and (live.get("data") or {}) == want["data"]
            and labels.get(MANAGED_BY) == DRIVER
        )


def owner_of(obj: Mapping[str, Any]) -> Owner:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return Owner(
        labels.get(MANAGED_BY), annotations.get(RELEASE_NAME), annotations.get(RELEASE_NAMESPACE)
    )


def decode_release(secret: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the release record Helm keeps in a `sh.helm.release.v1.*` Secret.

    `data.release` is base64 (the API's encoding of Secret data) of base64 (Helm's own) of
    gzipped JSON.
    """
    raw = base64.b64decode(base64.b64decode((secret.get("data") or {})["release"]))
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    return json.loads(raw)


def encode_release(record: Mapping[str, Any]) -> str:
    """The inverse of `decode_release`: the string to put in the Secret's `data.release`."""
    packed = gzip.compress(json.dumps(record, separators=(",", ":")).encode(), mtime=0)
    return base64.b64encode(base64.b64encode(packed)).decode()


@dataclass(frozen=True)
class LogQuery:
    """Which lines of a container's log: kubectl logs' -f, --tail, --since and --previous."""

    follow: bool = False
    tail: int | None = None  # the last N lines only
    since: int | None = None  # seconds back from now
    previous: bool = False  # the container's previous instance (before its last restart)


class Kube:
    """A connection to one cluster's API (one kubeconfig context)."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api
        self._resources: dict[str, dict[str, Resource]] = {}

    @classmethod
    def connect(cls, kubeconfig: Path | None, context: str | None) -> Kube:
        """Builds a client from `kubeconfig` (default: $KUBECONFIG or ~/.kube/config) and
        `context` (default: the current one); never writes the kubeconfig back."""
        from kubernetes import config
        from kubernetes.client import Configuration

        # The client's DEBUG output can carry response bodies, and those can be Secrets.
        logging.getLogger("kubernetes").setLevel(logging.INFO)
        configuration = Configuration()
        try:
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or "the default kubeconfig"
            raise ClusterError(f"{where}: cannot use context {context!r}: {exc}") from None
        from kubernetes.client import ApiClient

        return cls(ApiClient(configuration))

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    # -- raw requests ---------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        method, url, headers, body, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                method, url, header_params=headers, body=body, post_params=post,
                _request_timeout=_TIMEOUT,
            )  # fmt: skip
            raw = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self.server}: {exc}") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": raw[:200].decode(errors="replace")}
        return response.status, doc

    async def _request(
        self, method: str, path: str, *, allow: tuple[int, ...] = (), **call: Any
    ) -> tuple[int, dict[str, Any]]:
        """Runs one request (`_call`'s arguments) in a worker thread; statuses outside 2xx and
        `allow` raise."""
        status, doc = await asyncio.to_thread(functools.partial(self._call, method, path, **call))
        if not 200 <= status < 300 and status not in allow:
            message = doc.get("message") or doc.get("reason") or "no message"
            raise ClusterError(f"{method} {path}: HTTP {status}: {message}")
        return status, doc

    async def _get(self, path: str, query: Mapping[str, str] | None = None) -> dict | None:
        status, doc = await self._request("GET", path, query=query, allow=(404,))
        return None if status == 404 else doc

    # -- discovery and generic objects ----------------------------------------------------

    async def resource(self, api_version: str, kind: str) -> Resource | None:
        """Returns how the API serves `kind`, or None when it does not serve it (yet)."""
        if api_version not in self._resources:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            found = await self._get(path)
            self._resources[api_version] = {
                r["kind"]: Resource(r["name"], bool(r.get("namespaced")))
                for r in (found or {}).get("resources", [])
                if "/" not in r["name"]
            }
        return self._resources[api_version].get(kind)

    async def _path(self, ref: ObjectRef) -> str | None:
        res = await self.resource(ref.api_version, ref.kind)
        if res is None:
            return None
        base = f"/api/{ref.api_version}" if not ref.group else f"/apis/{ref.api_version}"
        if res.namespaced:
            return f"{base}/namespaces/{ref.namespace}/{res.plural}/{ref.name}"
        return f"{base}/{res.plural}/{ref.name}"

    async def scoped(self, ref: ObjectRef, default_namespace: str) -> ObjectRef:
        """Returns `ref` with the namespace Helm would use: the release's for namespaced kinds
        without one, none for cluster-scoped kinds."""
        res = await self.resource(ref.api_version, ref.kind)
        if res is None or not res.namespaced:
            return ObjectRef(ref.api_version, ref.kind, ref.name, None)
        return ObjectRef(ref.api_version, ref.kind, ref.name, ref.namespace or default_namespace)

    async def get_object(self, ref: ObjectRef) -> dict[str, Any] | None:
        """Returns the live object, or None when it (or its kind) does not exist."""
        path = await self._path(ref)
        return None if path is None else await self._get(path)

    async def create_object(self, ref: ObjectRef, body: Mapping[str, Any]) -> bool:
        """Creates the object unless it exists; returns whether it was created."""
        path = await self._path(ref)
        if path is None:
            raise ClusterError(f"{ref}: the API does not serve {ref.api_version} {ref.kind}")
        status, _ = await self._request(
            "POST",
            path.rpartition("/")[0],
            query={"fieldManager": FIELD_MANAGER},
            body=dict(body),
            allow=(409,),  # created by someone else since the read: just as good
        )
        return status != 409

    async def stamp_owner(self, ref: ObjectRef, release: str, namespace: str, version: str) -> None:
        """Gives the object Helm's ownership metadata for `release` so Helm adopts it.

        The patch carries the resourceVersion that was checked, so an object changed since
        (e.g. claimed by someone else) makes the write fail instead of overwriting.
        """
        path = await self._path(ref)
        if path is None:
            raise ClusterError(f"{ref}: the API does not serve {ref.api_version} {ref.kind}")
        patch = {
            "metadata": {
                "resourceVersion": version,
                "labels": {MANAGED_BY: HELM},
                "annotations": {RELEASE_NAME: release, RELEASE_NAMESPACE: namespace},
            }
        }
        status, _ = await self._request(
            "PATCH",
            path,
            query={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type="application/merge-patch+json",
            allow=(409,),
        )
        if status == 409:
            raise ClusterError(f"{ref} changed while being adopted; re-run to decide again")

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Returns the objects of a namespaced `kind` in `namespace` (those matching the label
        `selector` when given); none when the API does not serve the kind."""
        res = await self.resource(api_version, kind)
        if res is None:
            return []
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        found = await self._get(
            f"{base}/namespaces/{namespace}/{res.plural}",
            {"labelSelector": selector} if selector else None,
        )
        return list((found or {}).get("items", []))

    async def delete_object(
        self,
        ref: ObjectRef,
        *,
        uid: str,
        propagation: str = "Background",
        grace_seconds: int | None = None,
    ) -> bool:
        """Deletes the object if it is still the one with `uid`; returns False when it is gone.

        `propagation` is what happens to its dependents (Orphan keeps them); `grace_seconds`
        overrides a pod's own termination grace period. An object replaced since it was
        checked (another uid) is left alone and raises.
        """
        path = await self._path(ref)
        if path is None:
            return False
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
            "preconditions": {"uid": uid},
        }
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        status, _ = await self._request("DELETE", path, body=options, allow=(404, 409))
        if status == 409:
            raise ClusterError(f"{ref} was replaced while being removed; re-run to decide again")
        return status != 404

    # -- namespaces -----------------------------------------------------------------------

    async def get_namespace(self, name: str) -> dict[str, Any] | None:
        return await self._get(f"/api/v1/namespaces/{name}")

    async def ensure_namespace(
        self, name: str, *, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> bool:
        """Creates the namespace unless it exists; returns whether it was created."""
        if await self.get_namespace(name) is not None:
            return False
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        }
        status, _ = await self._request(
            "POST",
            "/api/v1/namespaces",
            query={"fieldManager": FIELD_MANAGER},
            body=body,
            allow=(409,),  # created by someone else since the read: just as good
        )
        return status != 409

    # -- Secrets from files ---------------------------------------------------------------

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def ensure_secret(self, secret: SecretData) -> bool:
        """Makes the Secret hold exactly `secret.data`; returns whether anything was written.

        It reads first and writes only on a difference, so a re-run makes no API writes.
        """
        live = await self.get_secret(secret.namespace, secret.name)
        if live is not None and secret.matches(live):
            return False
        body = secret.manifest()
        base = f"/api/v1/namespaces/{secret.namespace}/secrets"
        query = {"fieldManager": FIELD_MANAGER}
        if live is None:
            await self._request("POST", base, query=query, body=body)
        else:
            meta = live["metadata"]
            body["metadata"]["resourceVersion"] = meta["resourceVersion"]
            body["metadata"]["labels"] = {**(meta.get("labels") or {}), MANAGED_BY: DRIVER}
            if meta.get("annotations"):
                body["metadata"]["annotations"] = meta["annotations"]
            await self._request("PUT", f"{base}/{secret.name}", query=query, body=body)
        return True

    # -- Helm's release records -----------------------------------------------------------

    async def list_release_secrets(self, namespace: str, release: str) -> list[dict[str, Any]]:
        """Returns the Secrets holding every stored revision of `release`, in any order."""
        found = await self._get(
            f"/api/v1/namespaces/{namespace}/secrets",
            {"labelSelector": f"owner=helm,name={release}"},
        )
        return [s for s in (found or {}).get("items", []) if s.get("type") == RELEASE_SECRET_TYPE]

    async def set_release_status(
        self, namespace: str, secret_name: str, *, expect: str, status: str, description: str
    ) -> bool:
        """Rewrites one stored revision's status (the label and `info.status` inside the
        record), keeping everything else; returns False when the revision is gone or no longer
        has status `expect` (someone else moved it on), so nothing is overwritten blindly."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{secret_name}"
        live = await self._get(path)
        if live is None:
            return False
        record = decode_release(live)
        if record.get("info", {}).get("status") != expect:
            return False
        record["info"]["status"] = status
        record["info"]["description"] = description
        live["data"]["release"] = encode_release(record)
        labels = live["metadata"].setdefault("labels", {})
        labels["status"] = status
        labels["modifiedAt"] = str(int(time.time()))
        code, _ = await self._request(
            "PUT", path, query={"fieldManager": FIELD_MANAGER}, body=live, allow=(409,)
        )
        return code != 409

    # -- readiness ------------------------------------------------------------------------

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods of `namespace` matching the label `selector`, oldest first."""
        doc = await self._get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector})
        items = list((doc or {}).get("items") or [])
        return sorted(items, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def pod_log_lines(
        self, namespace: str, pod: str, *, container: str | None, query: LogQuery
    ) -> Iterator[str]:
        """Yields a container's log lines as the API streams them (blocking; run in a thread)."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            response = CoreV1Api(self._api).read_namespaced_pod_log(
                pod, namespace, container=container, follow=query.follow,
                tail_lines=query.tail, since_seconds=query.since, previous=query.previous,
                _preload_content=False,
            )  # fmt: skip
        except ApiException as exc:
            raise ClusterError(
                f"logs of pod {namespace}/{pod}: HTTP {exc.status}: {exc.reason}"
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self.server}: {exc}") from None
        pending = b""
        for chunk in response.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)
        if pending:
            yield pending.decode(errors="replace")

    async def _exec(self, namespace: str, pod: str, work: Callable[[Callable[..., Any]], T]) -> T:
        """Runs `work` in a worker thread with an opener of exec sessions into `pod` (the API
        call kubectl exec makes); what goes wrong on the way is a ClusterError."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream

        def session(container: str, argv: list[str], **options: Any) -> Any:
            call = CoreV1Api(self._api).connect_get_namespaced_pod_exec
            return stream(
                call, pod, namespace, container=container, command=argv, stdin=False, **options
            )

        try:
            return await asyncio.to_thread(work, session)
        except (ApiException, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            raise ClusterError(f"exec in pod {namespace}/{pod}: {exc}") from None

    async def exec_output(
        self, namespace: str, pod: str, container: str, argv: list[str], *, timeout: float = 30
    ) -> str:
        """Runs `argv` in a running container (as kubectl exec does) and returns its stdout;
        raises ClusterError when it cannot be run."""
        return await self._exec(
            namespace,
            pod,
            lambda session: str(
                session(
                    container, argv, stdout=True, stderr=False, tty=False, _request_timeout=timeout
                )
            ),
        )

    async def exec_lines(
        self,
        namespace: str,
        pod: str,
        container: str,
        argv: list[str],
        on_line: Callable[[str], None],
    ) -> int:
        """Runs `argv` in a running container on a terminal (programs that draw progress only
        on one, as agave's do, then print it) and hands each line it shows to `on_line` as it
        comes; returns the exit code. Cancelling the await closes the stream."""
        stop = threading.Event()

        def run(session: Callable[..., Any]) -> int:
            shell = session(
                container, argv, stdout=True, stderr=True, tty=True, _preload_content=False
            )
            pending = ""
            try:
                while shell.is_open() and not stop.is_set():
                    shell.update(timeout=0.5)
                    pending += shell.read_stdout() if shell.peek_stdout() else ""
                    *done, pending = re.split(r"[\r\n]+", pending)
                    for line in done:
                        if text := _ANSI.sub("", line).strip():
                            on_line(text)
                if text := _ANSI.sub("", pending).strip():
                    on_line(text)
            finally:
                shell.close()
            return -1 if stop.is_set() else int(shell.returncode)

        try:
            return await self._exec(namespace, pod, run)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def list_workloads(self, namespace: str) -> list[Workload]:
        """Returns the readiness of every Deployment, StatefulSet and DaemonSet in `namespace`."""
        out: list[Workload] = []
        for plural, kind in (
            ("deployments", "Deployment"),
            ("statefulsets", "StatefulSet"),
            ("daemonsets", "DaemonSet"),
        ):
            found = await self._get(f"/apis/apps/v1/namespaces/{namespace}/{plural}")
            for item in (found or {}).get("items", []):
                st = item.get("status") or {}
                if kind == "DaemonSet":
                    desired, ready = st.get("desiredNumberScheduled", 0), st.get("numberReady", 0)
                else:
                    desired = (item.get("spec") or {}).get("replicas", 1)
                    ready = st.get("readyReplicas", 0)
                out.append(Workload(kind, item["metadata"]["name"], int(desired), int(ready)))
        return out
