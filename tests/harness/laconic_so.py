"""laconic-so as it leaves a host: its deployment dir (the biscayne-like fixture, staged under a
test's folder) and the objects its `deployment start --perform-cluster-management` creates in
the kind cluster, made here the way laconic-so makes them (names, labels and specs as the
research notes on laconic-so describe), with no Helm ownership anywhere.

The objects are derived from the staged deployment dir (spec.yml, deployment.yml, config.env,
compose/*.yml) by laconic-so's rules, not by the importer under test, so the import and the
takeover meet an independent picture of what is in the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness import nodes
from tests.harness.client import ApiError, Client, Credentials, collection_path

LACONIC_SO = Path(__file__).resolve().parents[1] / "data" / "laconic-so"
FIXTURE = LACONIC_SO / "agave"
MANIFESTS = LACONIC_SO / "caddy"  # laconic-so's Caddy objects, one YAML file per part

CADDY_NAMESPACE = "caddy-system"
CADDY_NAME = "caddy-ingress-controller"
MEMLOCK = "high-memlock"
DEFAULT_STORAGE = "2147M"  # laconic-so's 2Gi default, as it renders it


def manifests(name: str) -> list[dict[str, Any]]:
    """The objects of MANIFESTS/`name`.yaml, fresh copies each call (tests may change them)."""
    return [doc for doc in yaml.safe_load_all((MANIFESTS / f"{name}.yaml").read_text()) if doc]


def caddy_manifests(email: str = "") -> list[dict[str, Any]]:
    """laconic-so's Caddy install: its namespace first, then the seven objects a takeover
    adopts; `email` is the ACME address laconic-so writes into the ConfigMap."""
    objects = manifests("caddy-ingress")
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            obj["data"]["email"] = email
    return objects


def create_all(client: Client, objects: list[dict[str, Any]]) -> None:
    """Creates `objects` in order, by create-only calls as laconic-so makes them."""
    for obj in objects:
        client.create(collection_path(obj), obj)


# Every object laconic-so's Caddy install creates but its namespace, by kind and name.
CADDY_OBJECTS = {
    (o["kind"], o["metadata"]["name"]) for o in caddy_manifests() if o["kind"] != "Namespace"
}
CERT_SECRET = manifests("certificate")[0]["metadata"]["name"]


def stage(tmp_path: Path) -> Path:
    """The fixture as a live deployment: under tmp_path/srv, with the node's identity keypair."""
    root = tmp_path / "srv"
    target = root / "deployments" / "agave"
    shutil.copytree(FIXTURE, target)
    for path in target.rglob("*"):
        if path.is_file():
            path.write_text(path.read_text().replace("/srv/", f"{root}/"))
    keys = target / "data" / "validator-config"
    keys.mkdir(parents=True)
    (keys / "validator-identity.json").write_text(json.dumps(list(os.urandom(64))))
    return target


@contextlib.contextmanager
def _held_ports(count: int, protocol: str) -> Iterator[list[int]]:
    """`count` distinct ports free on the host for `protocol`, held until the block ends."""
    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    held = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("0.0.0.0", 0))
            held.append(s)
        yield [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def stage_on_standin(tmp_path: Path, cluster: str, agave_image: str) -> Path:
    """The fixture staged to run on a kind stand-in: cluster-id `cluster`, every host port of
    kind-config.yml moved to a free one (node ports stay), mount propagation left out where this
    host's mounts cannot propagate (the stand-in drops it there, as docker refuses it), the
    agave image renamed to `agave_image`, and what laconic-so's host has: the mounted folders,
    the high-memlock base spec, a file in each data folder and the certificate backup file."""
    deployment = stage(tmp_path)
    (deployment / "deployment.yml").write_text(f"cluster-id: {cluster}\n")
    compose = deployment / "compose" / "docker-compose-agave.yml"
    compose.write_text(compose.read_text().replace("laconicnetwork/agave:local", agave_image))
    config_path = deployment / "kind-config.yml"
    config = yaml.safe_load(config_path.read_text())
    mappings = config["nodes"][0]["extraPortMappings"]
    tcp = [m for m in mappings if m.get("protocol", "TCP") == "TCP"]
    udp = [m for m in mappings if m.get("protocol") == "UDP"]
    with _held_ports(len(tcp), "TCP") as tcp_ports, _held_ports(len(udp), "UDP") as udp_ports:
        for m, port in [*zip(tcp, tcp_ports, strict=True), *zip(udp, udp_ports, strict=True)]:
            m["hostPort"] = port
    for mount in config["nodes"][0]["extraMounts"]:
        host = Path(mount["hostPath"])
        if host.suffix == ".json":
            host.write_text("{}\n")  # laconic-so's high-memlock OCI spec; only its path matters
        else:
            host.mkdir(parents=True, exist_ok=True)
        if not nodes.mount_propagates(str(host)):
            mount.pop("propagation", None)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    root = Path(yaml.safe_load((deployment / "spec.yml").read_text())["kind-mount-root"])
    for folder in data_folders(deployment):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "laconic-so-data.bin").write_bytes(os.urandom(4096))
    backup = root / "caddy-cert-backup"
    backup.mkdir(parents=True, exist_ok=True)
    (backup / "caddy-secrets.yaml").write_text("apiVersion: v1\nkind: List\nitems: []\n")
    return deployment


def stage_on_kind(tmp_path: Path, cluster: str, agave_image: str) -> Path:
    """stage_on_standin, then what real kind on this host needs: no unlimited memlock (runc here
    cannot raise a container's RLIMIT_MEMLOCK), requests this machine can meet, and, in place of
    laconic-so's image entrypoint (a script turning config.env into agave flags), the agave
    stand-in started on the RPC port with its ledger in the ledger volume."""
    deployment = stage_on_standin(tmp_path, cluster, agave_image)
    spec_path = deployment / "spec.yml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["security"].pop("unlimited-memlock")
    small = {
        "reservations": {"cpus": "0.1", "memory": "128M"},
        "limits": {"cpus": "2.0", "memory": "2000M"},
    }
    spec["resources"] = {"containers": small}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    compose_path = deployment / "compose" / "docker-compose-agave.yml"
    compose = yaml.safe_load(compose_path.read_text())
    service = compose["services"]["agave-validator"]
    service["deploy"]["resources"] = small
    service["entrypoint"] = (
        "agave-validator --ledger /data/ledger --rpc-port 8899 --rpc-bind-address 0.0.0.0 --log -"
    )
    compose_path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return deployment


def data_folders(deployment: Path) -> list[Path]:
    """The host folders of the agave node's volumes (spec.yml `volumes` of validator-*)."""
    volumes = yaml.safe_load((deployment / "spec.yml").read_text())["volumes"]
    return sorted({Path(p) for name, p in volumes.items() if name.startswith("validator-")})


# --- what laconic-so's start creates -----------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """One compose file: laconic-so's Deployment of all its services."""

    name: str
    services: dict[str, Any]
    volumes: tuple[str, ...]  # named volumes the file declares


@dataclass
class Seeded:
    """What laconic-so left in the cluster, by API path."""

    app: str
    namespace: str
    deployments: dict[str, str] = field(default_factory=dict)  # pod -> Deployment name
    paths: list[str] = field(default_factory=list)  # every object made, creation order
    kept: list[str] = field(default_factory=list)  # data objects a takeover must never remove

    def deployment_path(self, pod: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployments[pod]}"


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def _ports(entries: list[Any]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for entry in entries:
        text, _, proto = str(entry).partition("/")
        item = (int(text.rsplit(":", 1)[-1]), (proto or "tcp").upper())
        if item not in out:
            out.append(item)
    return out


class _Maker:
    def __init__(self, client: Client, deployment: Path) -> None:
        self.client = client
        self.spec = yaml.safe_load((deployment / "spec.yml").read_text())
        ids = yaml.safe_load((deployment / "deployment.yml").read_text())
        self.app = str(ids.get("deployment-id") or ids["cluster-id"])
        self.stack = Path(self.spec["stack"]).name
        self.namespace = self.spec.get("namespace") or (
            f"laconic-{self.stack}" if ids.get("deployment-id") else f"laconic-{ids['cluster-id']}"
        )
        self.dir = deployment
        self.env = _env_file(deployment / "config.env")
        stack = yaml.safe_load((deployment / "stack.yml").read_text())
        self.pods = []
        for pod in stack["pods"]:
            doc = yaml.safe_load((deployment / "compose" / f"docker-compose-{pod}.yml").read_text())
            self.pods.append(Pod(pod, doc["services"], tuple(doc.get("volumes") or ())))
        self.labels = {"app": self.app, "app.kubernetes.io/stack": self.stack}
        self.seeded = Seeded(self.app, self.namespace)

    def create(self, path: str, obj: dict[str, Any], *, kept: bool = False) -> None:
        made = self.client.create(path, obj)
        full = f"{path}/{made['metadata']['name']}"
        self.seeded.paths.append(full)
        if kept:
            self.seeded.kept.append(full)

    # -- the app ----------------------------------------------------------------------------

    def _node_path(self, host: str, volume: str) -> str:
        root = self.spec.get("kind-mount-root")
        if root and (host == root or host.startswith(f"{root}/")):
            return "/mnt" + host[len(root) :]
        return f"/mnt/{volume}"

    def _ports_of(self, service: str, doc: dict[str, Any]) -> list[tuple[int, str]]:
        listed = (self.spec.get("network") or {}).get("ports") or {}
        return _ports(listed.get(service, doc.get("ports") or []))

    def _image(self, image: str) -> str:
        registry = self.spec.get("image-registry")
        repository, _, tag = image.rpartition(":")
        if registry and tag == "local":
            return f"{registry}/{repository}:deploy-{self.app[-8:]}"
        return image

    def _resources(self) -> dict[str, Any]:
        containers = (self.spec.get("resources") or {}).get("containers") or {}
        want = containers.get("reservations") or {"cpus": "1.0", "memory": "2000M"}
        limit = containers.get("limits") or {"cpus": "4.0", "memory": "8000M"}
        return {
            "requests": {"cpu": str(want["cpus"]), "memory": str(want["memory"])},
            "limits": {"cpu": str(limit["cpus"]), "memory": str(limit["memory"])},
        }

    def _proxy_targets(self) -> list[tuple[str, str, str, int]]:
        """(host, path, container, port) of every http-proxy route."""
        out = []
        for entry in (self.spec.get("network") or {}).get("http-proxy") or []:
            for route in entry.get("routes") or []:
                container, _, port = route["proxy-to"].rpartition(":")
                out.append((entry["host-name"], route.get("path", "/"), container, int(port)))
        return out

    def _pod_of(self, container: str) -> Pod:
        return next(p for p in self.pods if container in p.services)

    def _names(self, pod: Pod) -> tuple[str, str]:
        if len(self.pods) == 1:
            return f"{self.app}-deployment", f"{self.app}-service"
        return f"{self.app}-{pod.name}-deployment", f"{self.app}-{pod.name}-service"

    def namespace_and_data(self) -> None:
        self.create(
            "/api/v1/namespaces",
            {
                "metadata": {
                    "name": self.namespace,
                    "labels": self.labels,
                    "annotations": {"laconic.com/deployment-dir": str(self.dir)},
                }
            },
            kept=True,
        )
        if (self.spec.get("security") or {}).get("unlimited-memlock"):
            self.create(
                "/apis/node.k8s.io/v1/runtimeclasses",
                {"metadata": {"name": MEMLOCK}, "handler": MEMLOCK},
                kept=True,
            )
        paths = self.spec.get("volumes") or {}
        configmaps = self.spec.get("configmaps") or {}
        declared = sorted({v for p in self.pods for v in p.volumes})
        for volume in declared:
            name = f"{self.app}-{volume}"
            labels = {**self.labels, "volume-label": name}
            if volume in configmaps:
                continue
            if paths.get(volume):
                self.create(
                    "/api/v1/persistentvolumes",
                    {
                        "metadata": {"name": name, "labels": labels},
                        "spec": {
                            "storageClassName": "manual",
                            "accessModes": ["ReadWriteOnce"],
                            "capacity": {"storage": DEFAULT_STORAGE},
                            "hostPath": {"path": self._node_path(str(paths[volume]), volume)},
                        },
                    },
                    kept=True,
                )
            claim: dict[str, Any] = {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": DEFAULT_STORAGE}},
            }
            if paths.get(volume):
                claim |= {"storageClassName": "manual", "volumeName": name}
            self.create(
                f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims",
                {"metadata": {"name": name, "labels": labels}, "spec": claim},
                kept=True,
            )
        for name in sorted(configmaps):
            self.create(
                f"/api/v1/namespaces/{self.namespace}/configmaps",
                {
                    "metadata": {
                        "name": f"{self.app}-{name}",
                        "labels": {**self.labels, "configmap-label": name},
                    },
                    "data": {"source": str(configmaps[name])},
                },
                kept=True,
            )

    def _container(self, service: str, doc: dict[str, Any]) -> dict[str, Any]:
        security = self.spec.get("security") or {}
        context: dict[str, Any] = {}
        if security.get("privileged"):
            context["privileged"] = True
        if security.get("capabilities"):
            context["capabilities"] = {"add": list(security["capabilities"])}
        mounts = []
        for entry in doc.get("volumes") or []:
            source, target, *options = str(entry).split(":")
            mount = {"name": source, "mountPath": target}
            if options == ["ro"]:
                mount["readOnly"] = True
            mounts.append(mount)
        container: dict[str, Any] = {
            "name": service,
            "image": self._image(doc["image"]),
            "imagePullPolicy": "IfNotPresent",
            "env": [{"name": k, "value": v} for k, v in self.env.items() if v],
            "envFrom": [{"secretRef": {"name": f"{self.app}-generated-secrets", "optional": True}}],
            "resources": self._resources(),
            "volumeMounts": mounts,
        }
        if doc.get("entrypoint"):
            container["command"] = str(doc["entrypoint"]).split()
        ports = self._ports_of(service, doc)
        if ports:
            container["ports"] = [{"containerPort": p, "protocol": proto} for p, proto in ports]
        if context:
            container["securityContext"] = context
        return container

    def app_objects(self) -> None:
        host_network = any(
            s.get("network_mode") == "host" for p in self.pods for s in p.services.values()
        )
        configmaps = self.spec.get("configmaps") or {}
        memlock = (self.spec.get("security") or {}).get("unlimited-memlock")
        for pod in self.pods:
            deployment, _ = self._names(pod)
            selector = {"app": self.app}
            labels = dict(self.labels)
            if len(self.pods) > 1:
                selector["app.kubernetes.io/component"] = pod.name
                labels["app.kubernetes.io/component"] = pod.name
            volumes = []
            for volume in pod.volumes:
                source = (
                    {"configMap": {"name": f"{self.app}-{volume}", "defaultMode": 0o755}}
                    if volume in configmaps
                    else {"persistentVolumeClaim": {"claimName": f"{self.app}-{volume}"}}
                )
                volumes.append({"name": volume, **source})
            data = [v for v in pod.volumes if v not in configmaps]
            spec: dict[str, Any] = {
                "containers": [self._container(s, d) for s, d in pod.services.items()],
                "volumes": volumes,
            }
            if host_network:
                spec |= {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
            if memlock:
                spec["runtimeClassName"] = MEMLOCK
            strategy = (
                {"type": "Recreate"}
                if data
                else {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                }
            )
            self.create(
                f"/apis/apps/v1/namespaces/{self.namespace}/deployments",
                {
                    "metadata": {"name": deployment, "labels": labels},
                    "spec": {
                        "replicas": int(self.spec.get("replicas", 1)),
                        "strategy": strategy,
                        "selector": {"matchLabels": selector},
                        "template": {"metadata": {"labels": labels}, "spec": spec},
                    },
                },
            )
            self.seeded.deployments[pod.name] = deployment
        targets = self._proxy_targets()
        for pod in self.pods:
            _, service = self._names(pod)
            ports = sorted({port for _, _, c, port in targets if c in pod.services})
            if not ports:
                continue
            selector = {"app": self.app}
            if len(self.pods) > 1:
                selector["app.kubernetes.io/component"] = pod.name
            self.create(
                f"/api/v1/namespaces/{self.namespace}/services",
                {
                    "metadata": {"name": service, "labels": self.labels},
                    "spec": {
                        "selector": selector,
                        "ports": [{"name": f"port-{p}", "port": p, "targetPort": p} for p in ports],
                    },
                },
            )
        made = set()
        for pod in self.pods:
            for service, doc in pod.services.items():
                for port, proto in self._ports_of(service, doc):
                    name = f"{self.app}-nodeport-{port}-{proto.lower()}"
                    if name in made:
                        continue
                    made.add(name)
                    self.create(
                        f"/api/v1/namespaces/{self.namespace}/services",
                        {
                            "metadata": {"name": name, "labels": self.labels},
                            "spec": {
                                "type": "NodePort",
                                "selector": {"app": self.app},
                                "ports": [
                                    {
                                        "port": port,
                                        "targetPort": port,
                                        "protocol": proto,
                                    }
                                ],
                            },
                        },
                    )
        rules: dict[str, list[dict[str, Any]]] = {}
        for host, path, container, port in targets:
            _, service = self._names(self._pod_of(container))
            backend = {"service": {"name": service, "port": {"number": port}}}
            paths = rules.setdefault(host, [])
            if all(p["path"] != path for p in paths):  # the first route of a path wins
                paths.append({"path": path, "pathType": "Prefix", "backend": backend})
        if rules:
            self.create(
                f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/ingresses",
                {
                    "metadata": {
                        "name": f"{self.app}-ingress",
                        "labels": self.labels,
                        "annotations": {
                            "kubernetes.io/ingress.class": "caddy",
                            "cert-manager.io/cluster-issuer": "letsencrypt-prod",
                        },
                    },
                    "spec": {
                        "rules": [
                            {"host": h, "http": {"paths": p}} for h, p in sorted(rules.items())
                        ]
                    },
                },
            )

    # -- Caddy ------------------------------------------------------------------------------

    def caddy(self) -> None:
        email = str((self.spec.get("network") or {}).get("acme-email") or "")
        for obj in caddy_manifests(email):
            self.create(collection_path(obj), obj)
        for obj in manifests("certificate"):
            self.create(collection_path(obj), obj, kept=True)
        if self.spec.get("kind-mount-root"):
            for obj in manifests("cert-backup"):
                self.create(collection_path(obj), obj)


def create_caddy(client: Client, deployment: Path) -> Seeded:
    """Creates laconic-so's Caddy install alone (its objects and a certificate Secret), by
    create-only calls, as its `deployment start` does before anything of the app."""
    maker = _Maker(client, deployment)
    maker.caddy()
    return maker.seeded


def start(kubeconfig: Path, deployment: Path, cluster: str, images: list[str]) -> None:
    """laconic-so's `deployment start` as far as the seed bug needs it: Caddy by create-only
    calls, then the images loaded into the node with `kind load`, one by one, the app's objects
    last. The load of a real node's ~10 GB takes 5-10 min; a stand-in image loads in seconds,
    so the rest of that load is a wait here. Killed during it (ansible's 600 s timeout), it
    leaves Caddy's objects behind, and every later start fails at its first create."""
    context = f"kind-{cluster}"
    client = Client(Credentials.from_kubeconfig(kubeconfig.read_text(), context))
    create_caddy(client, deployment)
    print("laconic-so: caddy installed; loading images", flush=True)
    for image in images:
        subprocess.run(["kind", "load", "docker-image", "--name", cluster, image], check=True)
    time.sleep(3600)  # the rest of ~10 GB of images
    print("laconic-so: images loaded", flush=True)


def seed(client: Client, deployment: Path) -> Seeded:
    """Creates what laconic-so's start leaves for the deployment dir: Caddy (its eight objects,
    a certificate Secret and the certificate backup), the app namespace with the volumes,
    claims, ConfigMaps, Deployments, Services, NodePort Services and Ingress."""
    maker = _Maker(client, deployment)
    maker.caddy()
    maker.namespace_and_data()
    maker.app_objects()
    return maker.seeded


if (
    __name__ == "__main__"
):  # python -m tests.harness.laconic_so KUBECONFIG DEPLOYMENT CLUSTER IMAGE...
    try:
        start(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
    except ApiError as e:  # laconic-so's own failure on a second start
        print(f"laconic-so: {e.reason}: {e.message}", file=sys.stderr)
        sys.exit(1)
