"""A kubelet (and scheduler) stand-in: registers nodes and reports pods as a kubelet would.

Nothing runs. When switched on, pods are bound to a node whose labels, taints, cordon and host
ports admit them (the scheduler's part), and their status is set to what a kubelet reports once
the containers started: Running and Ready, or Succeeded for run-to-completion pods
(restartPolicy Never/OnFailure). Controllers then compute real Deployment, StatefulSet and Job
status, so `helm --wait` completes. Image presence is checked the way a kind node would see it
(`ctr` in the node) where nodes are containers; a missing image, or one that would have to be
pulled, leaves the pod waiting with the kubelet's reason. Switched off, pods stay Pending and
`--wait` hangs, as on a cluster whose kubelet is gone. Probes are not run: a started container
counts as ready.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tests.harness.client import JSON, ApiError, Client

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
KUBELET_VERSION = "v1.37.2"

# has_image(node, image reference) -> whether the node's containerd holds it; None: no check.
ImageCheck = Callable[[str, str], bool]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kind_node_labels(name: str, role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels kubeadm and the kubelet put on a kind node, plus the config's own."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    if role == "control-plane":
        labels["node-role.kubernetes.io/control-plane"] = ""
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    return {**labels, **(extra or {})}


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str
    labels: dict[str, str]
    taints: list[dict[str, str]] = field(default_factory=list)
    pod_cidr: str = "10.244.0.0/24"


def register_node(client: Client, node: NodeInfo) -> None:
    """Creates the Node (already there is fine) and reports it Ready, as a kubelet does on start.

    The TaintNodesByCondition admission plugin taints a new node not-ready; with no node
    lifecycle controller running, the stand-in clears that taint itself once the node is Ready.
    """
    path = f"/api/v1/nodes/{node.name}"
    try:
        client.create(
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}},
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
    now = _now()
    resources = {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    conditions = [
        {"type": t, "status": "False", "reason": f"KubeletHas{r}", "message": m}
        for t, r, m in (
            ("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"),
        )
    ]
    conditions.append(
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in"}
    )
    for condition in conditions:
        condition.update(lastHeartbeatTime=now, lastTransitionTime=now)
    client.patch(
        f"{path}/status",
        {
            "status": {
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": node.address},
                    {"type": "Hostname", "address": node.name},
                ],
                "capacity": resources,
                "allocatable": resources,
                "nodeInfo": {
                    "kubeletVersion": KUBELET_VERSION,
                    "containerRuntimeVersion": "containerd://stand-in",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "laconic-helm test node",
                    "kernelVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        },
    )
    spec = {"taints": node.taints, "podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}
    client.patch(path, {"metadata": {"labels": node.labels}, "spec": spec})


def normalize_image(ref: str) -> str:
    """A reference as containerd names it: docker.io/library/x:latest for `x`."""
    name, _, digest = ref.partition("@")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if digest:
        return f"{name}@{digest}"
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _tolerates(tolerations: Iterable[JSON], taint: JSON) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _matches_expression(labels: dict[str, str], expr: JSON) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and labels[key].isdigit():
        number = int(labels[key])
        return number > int(values[0]) if op == "Gt" else number < int(values[0])
    return False


_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def _affinity_admits(pod: JSON, node: JSON) -> bool:
    required = pod["spec"].get("affinity", {}).get("nodeAffinity", {}).get(_REQUIRED)
    if not required:
        return True
    labels = node["metadata"].get("labels", {})
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in required.get("nodeSelectorTerms", []):
        if all(_matches_expression(labels, e) for e in term.get("matchExpressions", [])) and all(
            _matches_expression(fields, e) for e in term.get("matchFields", [])
        ):
            return True
    return False


def _host_ports(pod: JSON) -> set[tuple[int, str]]:
    return {
        (int(p["hostPort"]), p.get("protocol", "TCP"))
        for c in pod["spec"].get("containers", [])
        for p in c.get("ports", [])
        if p.get("hostPort")
    }


def _unschedulable_reason(
    pod: JSON, node: JSON, ports_in_use: set[tuple[int, str]], volumes: list[JSON]
) -> str | None:
    labels = node["metadata"].get("labels", {})
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return "didn't match Pod's node affinity/selector"
    if not _affinity_admits(pod, node):
        return "didn't match Pod's node affinity/selector"
    if node["spec"].get("unschedulable"):
        return "was unschedulable"
    tolerations = pod["spec"].get("tolerations") or []
    for taint in node["spec"].get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            tolerations, taint
        ):
            return f"had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    if _host_ports(pod) & ports_in_use:
        return "didn't have free ports for the requested pod ports"
    for volume in volumes:
        affinity = (volume["spec"].get("nodeAffinity") or {}).get("required")
        if affinity and not _affinity_admits(
            {"spec": {"affinity": {"nodeAffinity": {_REQUIRED: affinity}}}}, node
        ):
            return "had volume node affinity conflict"
    return None


def _runs_to_completion(pod: JSON) -> bool:
    return pod["spec"].get("restartPolicy", "Always") != "Always"


class Kubelet:
    """Plays the kubelet of every Node in one API; `start()` runs it in a thread until `stop()`."""

    def __init__(
        self, client: Client, has_image: ImageCheck | None = None, interval: float = 0.2
    ) -> None:
        self.client = client
        self.has_image = has_image
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: deque[str] = deque(maxlen=100)  # the latest, for a failing test

    def __enter__(self) -> Kubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kubelet-stand-in", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except (ApiError, OSError) as exc:
                # The API may be restarting, or a pod went away between list and update.
                self.errors.append(str(exc))
            self._stop.wait(self.interval)

    def sync(self) -> None:
        """One pass: finish deletions, bind pending pods, report bound pods' containers."""
        nodes = {n["metadata"]["name"]: n for n in self.client.get("/api/v1/nodes")["items"]}
        pods = self.client.get("/api/v1/pods")["items"]
        ports: dict[str, set[tuple[int, str]]] = {name: set() for name in nodes}
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if node in ports and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                ports[node] |= _host_ports(pod)
        images: dict[str, bool] = {}
        objects: dict[str, JSON | None] = {}
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            node = spec.get("nodeName")
            if meta.get("deletionTimestamp"):
                if node in nodes:
                    # Containers stop at once when told to: the graceful deletion completes.
                    self.client.delete(path, grace_seconds=0)
                continue
            if not node:
                if spec.get("schedulerName", "default-scheduler") == "default-scheduler":
                    self._schedule(pod, path, nodes, ports, objects)
                continue
            if node in nodes:
                self._report(pod, path, nodes[node], images, objects)

    def _get(self, path: str, cache: dict[str, JSON | None]) -> JSON | None:
        if path not in cache:
            cache[path] = self.client.get_or_none(path)
        return cache[path]

    def _claimed_volumes(
        self, pod: JSON, cache: dict[str, JSON | None]
    ) -> tuple[list[JSON], str | None]:
        """The PersistentVolumes the pod's claims are bound to, or why it cannot be placed:
        the scheduler waits for claims with immediate binding, and nothing here provisions."""
        namespace = pod["metadata"]["namespace"]
        volumes = []
        for volume in pod["spec"].get("volumes") or []:
            claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim_name:
                continue
            claim = self._get(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}", cache
            )
            if claim is None:
                return [], f'persistentvolumeclaim "{claim_name}" not found'
            bound_to = claim["spec"].get("volumeName")
            if claim["status"].get("phase") != "Bound" or not bound_to:
                return [], "pod has unbound immediate PersistentVolumeClaims"
            pv = self._get(f"/api/v1/persistentvolumes/{bound_to}", cache)
            if pv is not None:
                volumes.append(pv)
        return volumes, None

    def _schedule(
        self,
        pod: JSON,
        path: str,
        nodes: dict[str, JSON],
        ports: dict[str, set[tuple[int, str]]],
        cache: dict[str, JSON | None],
    ) -> None:
        reasons: dict[str, str] = {}
        volumes, claim_problem = self._claimed_volumes(pod, cache)
        for name in sorted(nodes, key=lambda n: len(ports[n])):
            reason = claim_problem or _unschedulable_reason(pod, nodes[name], ports[name], volumes)
            if reason is None:
                self.client.create(
                    f"{path}/binding",
                    {
                        "apiVersion": "v1",
                        "kind": "Binding",
                        "metadata": {"name": pod["metadata"]["name"]},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": name},
                    },
                )
                ports[name] |= _host_ports(pod)
                return
            reasons[name] = reason
        counts: dict[str, int] = {}
        for reason in reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        message = f"0/{len(nodes)} nodes are available: " + ", ".join(
            f"{n} node(s) {r}" for r, n in sorted(counts.items())
        )
        if claim_problem:
            message = f"0/{len(nodes)} nodes are available: {claim_problem}"
        current = [
            c for c in pod["status"].get("conditions", []) if c.get("type") == "PodScheduled"
        ]
        if current and current[0].get("message") == message:
            return
        self.client.patch(
            f"{path}/status",
            {
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": message,
                            "lastTransitionTime": _now(),
                        }
                    ]
                }
            },
        )

    def _missing_image(self, node: str, container: JSON, cache: dict[str, bool]) -> str | None:
        """The kubelet's waiting reason when the container's image cannot be had, else None."""
        if self.has_image is None:
            return None
        image = normalize_image(container["image"])
        policy = container.get("imagePullPolicy", "IfNotPresent")
        if policy == "Always":
            return "ErrImagePull"  # a pull needs a registry; the stand-in has none
        key = f"{node}\0{image}"
        if key not in cache:
            cache[key] = self.has_image(node, image)
        if cache[key]:
            return None
        return "ErrImageNeverPull" if policy == "Never" else "ErrImagePull"

    def _missing_reference(
        self, namespace: str, kind: str, ref: JSON, key: str | None, cache: dict[str, JSON | None]
    ) -> str | None:
        """Why a referenced ConfigMap or Secret (or its key) cannot be used, else None."""
        if ref.get("optional"):
            return None
        name = ref.get("name", "")
        resource = "secrets" if kind == "Secret" else "configmaps"
        obj = self._get(f"/api/v1/namespaces/{namespace}/{resource}/{name}", cache)
        if obj is None:
            return f'{kind.lower()} "{name}" not found'
        present = {*(obj.get("data") or {}), *(obj.get("binaryData") or {})}
        if key is not None and key not in present:
            return f"couldn't find key {key} in {kind} {namespace}/{name}"
        return None

    def _volume_problem(self, pod: JSON, cache: dict[str, JSON | None]) -> str | None:
        """Why the pod's volumes cannot be mounted (the kubelet's FailedMount), else None."""
        namespace = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or []:
            sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
            for source in sources:
                for attr, kind, name_key in (
                    ("secret", "Secret", "secretName"),
                    ("configMap", "ConfigMap", "name"),
                ):
                    ref = source.get(attr)
                    if ref is None:
                        continue
                    named = {"name": ref.get(name_key, ""), "optional": ref.get("optional")}
                    problems = [
                        self._missing_reference(namespace, kind, named, item["key"], cache)
                        for item in ref.get("items") or []
                    ] or [self._missing_reference(namespace, kind, named, None, cache)]
                    problem = next((p for p in problems if p), None)
                    if problem:
                        return f'MountVolume.SetUp failed for volume "{volume["name"]}": {problem}'
        return None

    def _env_problem(
        self, namespace: str, container: JSON, cache: dict[str, JSON | None]
    ) -> str | None:
        """Why the container's environment cannot be built (CreateContainerConfigError)."""
        for source in container.get("envFrom") or []:
            for attr, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if attr in source:
                    problem = self._missing_reference(namespace, kind, source[attr], None, cache)
                    if problem:
                        return problem
        for env in container.get("env") or []:
            value_from = env.get("valueFrom") or {}
            for attr, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if attr in value_from:
                    ref = value_from[attr]
                    problem = self._missing_reference(namespace, kind, ref, ref.get("key"), cache)
                    if problem:
                        return problem
        return None

    def _report(
        self,
        pod: JSON,
        path: str,
        node: JSON,
        cache: dict[str, bool],
        objects: dict[str, JSON | None],
    ) -> None:
        spec, status = pod["spec"], pod["status"]
        node_name = node["metadata"]["name"]
        namespace = pod["metadata"]["namespace"]
        containers = spec.get("containers", [])
        init = spec.get("initContainers", [])
        mount_problem = self._volume_problem(pod, objects)
        waiting: dict[str, tuple[str, str]] = {}
        for c in (*init, *containers):
            if mount_problem:
                waiting[c["name"]] = ("ContainerCreating", mount_problem)
            elif (image_reason := self._missing_image(node_name, c, cache)) is not None:
                waiting[c["name"]] = (
                    image_reason,
                    f'image "{c["image"]}" is not present on node {node_name} and cannot be pulled',
                )
            elif (env_problem := self._env_problem(namespace, c, objects)) is not None:
                waiting[c["name"]] = ("CreateContainerConfigError", env_problem)
        if any(c["name"] in waiting for c in init):
            for c in containers:
                waiting.setdefault(c["name"], ("PodInitializing", ""))
        done = _runs_to_completion(pod) and not waiting
        phase = "Succeeded" if done else ("Pending" if waiting else "Running")
        ready = not waiting and not done
        reported = {
            c["name"]: c.get("state", {}).get("waiting", {}).get("reason")
            for c in (
                *status.get("initContainerStatuses", []),
                *status.get("containerStatuses", []),
            )
            if c.get("state", {}).get("waiting")
        }
        wanted = {name: reason for name, (reason, _) in waiting.items()}
        if status.get("phase") == phase and _ready(status) == ready and reported == wanted:
            return
        now = _now()
        node_ip = next(
            (
                a["address"]
                for a in node["status"].get("addresses", [])
                if a["type"] == "InternalIP"
            ),
            "",
        )
        pod_ip = node_ip if spec.get("hostNetwork") else _pod_ip(node, pod)

        def state(c: JSON, finished: bool) -> JSON:
            cid = "containerd://" + hashlib.sha256(f"{path}/{c['name']}".encode()).hexdigest()
            base = {"name": c["name"], "image": c["image"], "imageID": "", "restartCount": 0}
            if c["name"] in waiting:
                reason, message = waiting[c["name"]]
                return {
                    **base,
                    "ready": False,
                    "started": False,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            if finished:
                term = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
                return {
                    **base,
                    "containerID": cid,
                    "ready": False,
                    "started": False,
                    "state": {"terminated": {**term, "containerID": cid}},
                }
            return {
                **base,
                "containerID": cid,
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }

        def condition(kind: str, ok: bool) -> JSON:
            cond = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
            if not ok:
                cond["reason"] = "PodCompleted" if done else "ContainersNotReady"
            return cond

        init_done = not any(c["name"] in waiting for c in init)
        self.client.patch(
            f"{path}/status",
            {
                "status": {
                    "phase": phase,
                    "hostIP": node_ip,
                    "hostIPs": [{"ip": node_ip}],
                    "podIP": pod_ip,
                    "podIPs": [{"ip": pod_ip}],
                    "startTime": status.get("startTime", now),
                    "conditions": [
                        condition("PodReadyToStartContainers", True),
                        condition("Initialized", init_done),
                        condition("Ready", ready),
                        condition("ContainersReady", ready),
                        condition("PodScheduled", True),
                    ],
                    "initContainerStatuses": [state(c, True) for c in init],
                    "containerStatuses": [state(c, done) for c in containers],
                }
            },
        )


def _ready(status: JSON) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )


def _pod_ip(node: JSON, pod: JSON) -> str:
    """A stable address in the node's pod range (10.244.<n>.0/24), derived from the pod's uid."""
    cidr = node["spec"].get("podCIDR") or "10.244.0.0/24"
    prefix = cidr.split("/")[0].rsplit(".", 1)[0]
    host = 2 + int(hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest(), 16) % 250
    return f"{prefix}.{host}"
