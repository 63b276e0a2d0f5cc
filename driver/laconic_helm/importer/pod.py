"""The agave pod's resources, scheduling and security context, as laconic-so ran it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from laconic_helm.errors import UserError
from laconic_helm.importer.cluster import MEMLOCK_RUNTIME
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import Service, SoDeployment, as_list, as_mapping

# laconic-so's resources for a container that names none.
DEFAULT_RESOURCES = {
    "reservations": {"cpus": "1.0", "memory": "2000M"},
    "limits": {"cpus": "4.0", "memory": "8000M"},
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtTpPeE]?)(i?)[bB]?\s*$")
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def _quantity(value: Any, what: str, where: str, found: Findings) -> str | None:
    """A compose CPU count or size as laconic-so rendered it for Kubernetes."""
    if what == "cpus":
        try:
            return str(float(value))
        except (TypeError, ValueError):
            found.add("unmapped", where, f"cpus {value!r} is not a number; left out")
            return None
    match = _SIZE.match(str(value))
    if match is None:
        found.add("unmapped", where, f"memory {value!r} is not a size; left out")
        return None
    number, unit, binary = match.groups()
    size = float(number) * (1024 if binary else 1000) ** _SIZE_POWERS[unit.lower()]
    return f"{int(size / 1e6)}M"


def pod_resources(so: SoDeployment, service: Service, found: Findings) -> dict[str, Any]:
    """laconic-so's order: spec per container, compose deploy.resources, spec global, default."""
    key = "resources.containers"
    containers = as_mapping(so.section("resources").get("containers"), so.at(so.spec_key(key)))
    per_container = containers.get(service.name)
    deploy = as_mapping(service.doc.get("deploy"), so.at(service.key("deploy")))
    if isinstance(per_container, Mapping):
        chosen, where = per_container, so.spec_key(f"{key}.{service.name}")
    elif isinstance(deploy.get("resources"), Mapping):
        chosen, where = deploy["resources"], service.key("deploy.resources")
    elif "reservations" in containers or "limits" in containers:
        chosen, where = containers, so.spec_key(key)
    else:
        chosen, where = DEFAULT_RESOURCES, "laconic-so"
        found.add(
            "changed", service.key("deploy"), "no resources set, so laconic-so gave the node "
            "requests cpu 1 / memory 2000M and limits cpu 4 / memory 8000M; kept (agave.yaml)",
        )  # fmt: skip
    for extra in sorted(set(deploy) - {"resources"}):
        found.add("ignored", service.key(f"deploy.{extra}"), "laconic-so reads resources only")
    out: dict[str, Any] = {}
    for side, k8s in (("reservations", "requests"), ("limits", "limits")):
        block = as_mapping(chosen.get(side), so.at(f"{where}.{side}"))
        values = {}
        for what, name in (("cpus", "cpu"), ("memory", "memory")):
            if block.get(what) is not None:
                q = _quantity(block[what], what, f"{where}.{side}.{what}", found)
                if q is not None:
                    values[name] = q
        for extra in sorted(set(block) - {"cpus", "memory"}):
            found.add("unmapped", f"{where}.{side}.{extra}", "no container resource equivalent")
        if values:
            out[k8s] = values
    return out


def pod_scheduling(so: SoDeployment, service: Service) -> dict[str, Any]:
    """spec.yml's pod labels, annotations, node affinities and tolerations, as chart values
    (laconic-so replaced `{name}` in a label or annotation key with the service's name)."""
    out: dict[str, Any] = {}
    for key, value_key in (("labels", "podLabels"), ("annotations", "podAnnotations")):
        items = so.section(key)
        if items:
            out[value_key] = {
                str(k).replace("{name}", service.name): str(v) for k, v in items.items()
            }
    terms = []
    for i, a in enumerate(
        as_list(so.spec.get("node-affinities"), so.at("spec.yml: node-affinities"))
    ):
        item = as_mapping(a, so.at(f"spec.yml: node-affinities[{i}]"), optional=False)
        terms.append(
            {"key": str(item.get("label")), "operator": "In", "values": [str(item.get("value"))]}
        )
    if terms:
        required = {"nodeSelectorTerms": [{"matchExpressions": terms}]}
        out["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
        }
    tolerations = []
    for i, t in enumerate(
        as_list(so.spec.get("node-tolerations"), so.at("spec.yml: node-tolerations"))
    ):
        item = as_mapping(t, so.at(f"spec.yml: node-tolerations[{i}]"), optional=False)
        tolerations.append(
            {
                "key": str(item.get("key")),
                "operator": "Equal",
                "value": str(item.get("value")),
                "effect": "NoSchedule",
            }
        )
    if tolerations:
        out["tolerations"] = tolerations
    return out


def pod_security(
    so: SoDeployment, service: Service, mode: str, gid: int | None, found: Findings
) -> dict[str, Any]:
    """Pod security context, privileged and runtime class, as laconic-so ran the node."""
    values: dict[str, Any] = {}
    context: dict[str, Any] = {}
    user = service.doc.get("user")
    if user is not None:
        uid, _, group = str(user).partition(":")
        for name, value in (("runAsUser", uid), ("runAsGroup", group)):
            if value and not value.isdigit():
                raise UserError(f"{so.at(service.key('user'))}: expected uid[:gid], got {user!r}")
            if value:
                context[name] = int(value)
    if gid is not None:
        # The keypairs are mounted 0400 and root-owned; fsGroup makes them 0440 in this group, so
        # the image's own user reads them as it read them from /data/config, and the files it
        # writes in the host folders keep their owner (a rollback to laconic-so still works).
        context["fsGroup"] = gid
    if context:
        values["podSecurityContext"] = context
    security = so.section("security")
    runtime = security.get("runtime-class") or (
        MEMLOCK_RUNTIME if security.get("unlimited-memlock") else ""
    )
    if runtime:
        values["runtimeClassName"] = str(runtime)
    values["privileged"] = bool(security.get("privileged"))
    chart_caps = {"IPC_LOCK", "SYS_NICE"} if mode != "test" else set()
    caps = as_list(security.get("capabilities"), so.at("spec.yml: security.capabilities"))
    extra = [str(c) for c in caps if str(c) not in chart_caps]
    if extra and not values["privileged"]:
        found.add("unmapped", "spec.yml: security.capabilities", f"{', '.join(extra)}: the chart "
                  "adds IPC_LOCK and SYS_NICE only (NET_ADMIN and NET_RAW with xdp)")  # fmt: skip
    for key in sorted(
        set(security) - {"privileged", "capabilities", "unlimited-memlock", "runtime-class"}
    ):
        found.add("unmapped", f"spec.yml: security.{key}", "no chart equivalent")
    return values
