"""The takeover plan: which of laconic-so's objects the first deploy adopts, removes (and after
which release) or keeps; the spec's `retire` sections come from it, the report lists it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from laconic_helm.importer.caddy import CADDY_NAME, CADDY_NAMESPACE
from laconic_helm.importer.cluster import MEMLOCK_RUNTIME
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import Service, SoDeployment, as_list, as_mapping
from laconic_helm.importer.volumes import volume_mounts

# Seconds laconic-so's agave pod gets to stop when it is retired: the chart's own stop period
# (its entrypoint runs `agave-validator exit` on SIGTERM). It ends as soon as agave has exited.
OLD_NODE_GRACE = 600


def _ports_of(so: SoDeployment, service: Service) -> list[tuple[int, str]]:
    """(container port, protocol) of each NodePort Service laconic-so made for the service."""
    listed = as_mapping(so.section("network").get("ports"), so.at("spec.yml: network.ports"))
    entries = listed.get(service.name)
    if not isinstance(entries, list):
        entries = as_list(service.doc.get("ports"), so.at(service.key("ports")))
    out: list[tuple[int, str]] = []
    for entry in entries:
        text, _, proto = str(entry).partition("/")
        port = text.rsplit(":", 1)[-1]
        item = (int(port), proto.lower() or "tcp") if port.isdigit() else None
        if item and item not in out:
            out.append(item)
    return out


def takeover_plan(
    so: SoDeployment,
    agave: Service,
    namespace: str,
    caddy: Mapping[str, Any],
    *,
    routes: bool,
) -> dict[str, Any]:
    """The laconic-so objects the first deploy adopts, removes (and when) or leaves alone.

    `routes`: the agave release serves the node's routes, so laconic-so's Ingress (whose host
    and path the new one takes) goes; without them it stays, routing whatever else it holds.
    """

    def ref(kind: str, name: str, ns: str | None = None) -> dict[str, str]:
        return {"kind": kind, "name": name} | ({"namespace": ns} if ns else {})

    adopt = [
        ref("ServiceAccount", CADDY_NAME, CADDY_NAMESPACE),
        ref("ClusterRole", CADDY_NAME),
        ref("ClusterRoleBinding", CADDY_NAME),
        ref("ConfigMap", f"{CADDY_NAME}-configmap", CADDY_NAMESPACE),
        ref("Service", CADDY_NAME, CADDY_NAMESPACE),
        ref("Deployment", CADDY_NAME, CADDY_NAMESPACE),
        ref("IngressClass", "caddy"),
    ]
    remove_app = [ref("Deployment", so.deployment_name(agave.pod), namespace)]
    if routes:
        remove_app += [
            ref("Service", so.service_name(agave.pod), namespace),
            ref("Ingress", f"{so.app}-ingress", namespace),
        ]
    remove_app += [
        ref("Service", f"{so.app}-nodeport-{port}-{proto}", namespace)
        for port, proto in _ports_of(so, agave)
    ]
    remove_caddy = []
    if caddy.get("certBackup", {}).get("enabled"):
        remove_caddy = [
            ref(kind, "caddy-cert-backup", CADDY_NAMESPACE)
            for kind in ("CronJob", "RoleBinding", "Role", "ServiceAccount")
        ]
    spec_volumes = so.section("volumes")
    keep = [ref("Namespace", namespace), ref("Namespace", CADDY_NAMESPACE)]
    for name in sorted(volume_mounts(agave, Findings())):
        if spec_volumes.get(name):
            keep.append(ref("PersistentVolume", f"{so.app}-{name}"))
        keep.append(ref("PersistentVolumeClaim", f"{so.app}-{name}", namespace))
    if so.section("security").get("unlimited-memlock"):
        keep.append(ref("RuntimeClass", MEMLOCK_RUNTIME))
    leave = [
        ref("Deployment", so.deployment_name(pod), namespace) for pod in so.pods if pod != agave.pod
    ]
    return {
        "appNamespace": namespace,
        "appSelector": f"app={so.app}",
        "caddyCertificates": f"Secrets labelled manager=caddy in {CADDY_NAMESPACE}: kept as is",
        "adoptIntoCaddyRelease": adopt,
        "removeAfterCaddyRelease": remove_caddy,
        "removeAfterAgaveDeployment": remove_app,
        "keep": keep,
        "leaveRunning": leave,
    }
