"""Maps the agave compose service to the agave release: its values (image, ports, flags, volumes,
routes) and Secrets made from files (the keypairs, named by path and never copied; the metrics
config, which holds a password, written beside the spec)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from laconic_helm.errors import UserError
from laconic_helm.importer.environment import (
    METRICS_ENV,
    EnvAt,
    agave_flags,
    env_keys,
    passed_env,
    port_range,
    service_env,
    whole_number,
)
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.pod import pod_resources, pod_scheduling, pod_security
from laconic_helm.importer.reading import Service, SoDeployment, as_list, as_mapping
from laconic_helm.importer.volumes import (
    IDENTITY_IN_CONTAINER,
    VOTE_IN_CONTAINER,
    chart_volumes,
    keypair,
    service_volumes,
)

AGAVE_RELEASE = "agave"
IDENTITY_SECRET = "agave-identity"
METRICS_SECRET = "agave-metrics"
METRICS_FILE = "agave-metrics-config"
VOTE_SECRET = "agave-vote"
# Compose keys laconic-so does not carry into Kubernetes: they had no effect before either.
IGNORED_COMPOSE_KEYS = frozenset(
    {
        "restart", "privileged", "cap_add", "ulimits", "healthcheck", "depends_on",
        "security_opt", "working_dir", "hostname", "extra_hosts", "shm_size", "tmpfs", "devices",
        "env_file", "labels", "stop_grace_period", "container_name",
    }
)  # fmt: skip
MAPPED_COMPOSE_KEYS = frozenset(
    {"image", "network_mode", "environment", "volumes", "ports", "deploy", "user"}
)


def is_agave(service: Service) -> bool:
    """Stacks name the node's service freely; its image or its AGAVE_MODE gives it away."""
    image = str(service.doc.get("image") or "")
    name = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return name == "agave" or "AGAVE_MODE" in env_keys(service)


def _image(so: SoDeployment, service: Service, found: Findings) -> tuple[str, str, bool]:
    """(repository, tag, built locally) of the node's image, after laconic-so's overrides."""
    overrides = so.section("image-overrides")
    if service.name in overrides:
        image, where = str(overrides[service.name]), so.spec_key(f"image-overrides.{service.name}")
    else:
        image, where = str(service.doc.get("image") or ""), service.key("image")
    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else ("", "", "")
    if "@" in image or not repository or tag == "latest":
        raise UserError(
            f"{so.at(where)}: image {image!r} has no pinned tag, and the agave chart refuses "
            "floating tags and digests",
            hint="tag the image (e.g. laconicnetwork/agave:local) and re-run the import",
        )
    local = tag == "local" or any(repository.endswith(c) for c in so.stack_containers)
    registry = so.spec.get("image-registry")
    if registry and local:
        found.add(
            "changed", so.spec_key("image-registry"), f"laconic-so ran {registry}/{repository}"
            f":deploy-<id>; laconic-helm loads the local {repository}:{tag} into the node "
            "instead (build it on the host as before)",
        )  # fmt: skip
    return repository, tag, local


def _ingress(
    so: SoDeployment, service: Service, rpc_port: int, found: Findings
) -> dict[str, Any] | None:
    """http-proxy routes to the node's RPC and WebSocket ports as the chart's two Ingresses."""
    network = so.section("network")
    rpc: list[tuple[str, str]] = []
    ws: list[tuple[str, str]] = []
    key = "network.http-proxy"
    for i, entry in enumerate(as_list(network.get("http-proxy"), so.at(so.spec_key(key)))):
        at = so.spec_key(f"{key}[{i}]")
        proxy = as_mapping(entry, so.at(at), optional=False)
        host = str(proxy.get("host-name") or "").lower()
        for j, route in enumerate(as_list(proxy.get("routes"), so.at(f"{at}.routes"))):
            r = as_mapping(route, so.at(f"{at}.routes[{j}]"), optional=False)
            target, _, port = str(r.get("proxy-to") or "").rpartition(":")
            path = str(r.get("path") or "/")
            if target != service.name or port not in (str(rpc_port), str(rpc_port + 1)):
                found.add(
                    "unmapped", f"{at}.routes[{j}]", f"{host}{path} -> {target}:{port} is not the "
                    "agave node's RPC or WebSocket; no Ingress route for it (laconic-so's Ingress "
                    "that held it goes once the agave release serves the node's routes)",
                )  # fmt: skip
                continue
            (rpc if port == str(rpc_port) else ws).append((host, path))
    where = so.spec_key(key)
    if not rpc:
        if ws:
            found.add("unmapped", where, "WebSocket routes without an RPC route: the chart "
                      "serves the WebSocket next to RPC only; no Ingress made")  # fmt: skip
        return None
    hosts = list(dict.fromkeys(h for h, _ in rpc))
    path = rpc[0][1]
    for host, other in rpc[1:]:
        if other != path:
            found.add("unmapped", where, f"RPC route {host}{other}: the chart serves RPC on "
                      f"one path ({path}) of every RPC host")  # fmt: skip
    doc: dict[str, Any] = {
        "enabled": True,
        "className": "caddy",
        "rpc": {"hosts": hosts, "path": path},
    }
    own = [(h, p) for h, p in ws if h not in hosts]
    shared = [(h, p) for h, p in ws if h in hosts]
    if own:
        doc["ws"] = {"hosts": list(dict.fromkeys(h for h, _ in own)), "path": own[0][1]}
        for host, other in shared:
            found.add("unmapped", where, f"WebSocket route {host}{other}: once the WebSocket has "
                      "hosts of its own, the chart serves it there only")  # fmt: skip
    elif shared:
        host, ws_path = shared[0]
        if ws_path == path:
            found.add(
                "changed", where, f"the WebSocket shared {host}{path} with RPC, so laconic-so's "
                f"Ingress sent it to RPC; it is served at wss://{host}/ws now",
            )  # fmt: skip
            ws_path = "/ws"
        doc["ws"] = {"hosts": [], "path": ws_path}
    return doc


@dataclass
class Agave:
    values: dict[str, Any]
    secrets: list[dict[str, Any]]
    image: str | None  # a locally built image, which laconic-helm loads into the node
    mode: str
    metrics: str | None = None  # SOLANA_METRICS_CONFIG, written to METRICS_FILE


def map_agave(
    so: SoDeployment, service: Service, cluster: Mapping[str, Any], found: Findings
) -> Agave:
    """The agave chart's values for the agave compose service, plus its keypair Secrets."""
    env = service_env(service, so.env)
    at = EnvAt(so, service)
    mode = env.get("AGAVE_MODE", "test")
    if mode not in ("test", "rpc", "validator"):
        raise at.error("AGAVE_MODE", f"expected test, rpc or validator, got {mode!r}")
    for key in sorted(set(service.doc) - MAPPED_COMPOSE_KEYS):
        if key in IGNORED_COMPOSE_KEYS:
            found.add("ignored", service.key(key), "laconic-so does not carry it into Kubernetes")
        elif key in ("command", "entrypoint"):
            found.add("unmapped", service.key(key), "the chart runs agave-validator with flags")
        else:
            found.add("unmapped", service.key(key), "unknown compose key; not carried over")
    repository, tag, local = _image(so, service, found)
    values: dict[str, Any] = {
        "mode": mode,
        "image": {
            "repository": repository,
            "tag": tag,
            "pullPolicy": str(so.spec.get("image-pull-policy") or "IfNotPresent"),
        },
    }
    # laconic-so put every pod of a stack on the host network when any service asked for it.
    values["hostNetwork"] = any(s.doc.get("network_mode") == "host" for s in so.services)
    if not values["hostNetwork"] and so.section("network").get("ports"):
        found.add("ignored", "spec.yml: network.ports", "NodePort Services on node ports the "
                  "kind cluster does not publish are not made")  # fmt: skip
    rpc = whole_number(env.get("RPC_PORT", "8899"), at, "RPC_PORT")
    gossip = whole_number(env.get("GOSSIP_PORT", "8001"), at, "GOSSIP_PORT")
    values["ports"] = {"rpc": rpc, "gossip": gossip}
    if mode != "test":
        taken = (rpc, rpc + 1, gossip)
        span = env.get("DYNAMIC_PORT_RANGE", "9000-10000")
        values["ports"]["dynamicPortRange"] = port_range(span, at, taken, found)
    volumes = service_volumes(so, service, cluster, found)

    def in_volumes(message: str) -> UserError:
        return UserError(f"{so.at(service.key('volumes'))}: {message}")

    secrets: list[dict[str, Any]] = []
    gid = None
    if mode != "test":
        path, gid = keypair("identity", IDENTITY_IN_CONTAINER, volumes, in_volumes, found)
        secrets.append({"name": IDENTITY_SECRET, "files": {"identity.json": str(path)}})
        values["identity"] = {"existingSecret": IDENTITY_SECRET, "secretKey": "identity.json"}
    if mode == "validator":
        vote = env.get("VOTE_ACCOUNT_KEYPAIR", VOTE_IN_CONTAINER)
        path, _ = keypair(
            "vote account", vote, volumes, lambda m: at.error("VOTE_ACCOUNT_KEYPAIR", m), found
        )
        secrets.append({"name": VOTE_SECRET, "files": {"vote-account.json": str(path)}})
        values["vote"] = {"existingSecret": VOTE_SECRET, "secretKey": "vote-account.json"}
    values.update(pod_security(so, service, mode, gid, found))
    values["volumes"] = chart_volumes(so, service, volumes, mode, found)
    values["flags"] = agave_flags(env, mode, at, found)
    passed = passed_env(so, env, at, mode, found)
    if passed:
        values["env"] = passed
    metrics = env.get(METRICS_ENV) or None
    if metrics:
        secrets.append({"name": METRICS_SECRET, "files": {"config": METRICS_FILE}})
        values["metrics"] = {"existingSecret": METRICS_SECRET, "secretKey": "config"}
        found.add("changed", at(METRICS_ENV), f"holds a password: it reaches the node from the "
                  f"Secret {METRICS_SECRET}, made from {METRICS_FILE} (beside the spec, 0600), "
                  "never from the values")  # fmt: skip
    values["resources"] = pod_resources(so, service, found)
    ingress = _ingress(so, service, rpc, found)
    if ingress is not None:
        values["ingress"] = ingress
        if values["flags"].get("rpc-bind-address") == "127.0.0.1":
            found.add("changed", at("RPC_BIND_ADDRESS"), "RPC listens on 127.0.0.1 only, so "
                      "Caddy cannot reach it (it could not under laconic-so either)")  # fmt: skip
    values.update(pod_scheduling(so, service))
    replicas = so.spec.get("replicas")
    if replicas not in (None, 1):
        found.add("changed", "spec.yml: replicas", f"{replicas}: an agave node runs as one pod")
    found.add(
        "changed", service.key("image"), "the image's entrypoint no longer runs: the chart starts "
        "agave-validator with the flags in agave.yaml, stops it with `agave-validator exit` "
        "(600 s grace; laconic-so gave 30 s) and lets agave fetch snapshots itself",
    )  # fmt: skip
    return Agave(values, secrets, f"{repository}:{tag}" if local else None, mode, metrics)
