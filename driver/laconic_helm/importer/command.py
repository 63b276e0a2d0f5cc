"""`laconic-helm import laconic-so`: reads the deployment dir, maps each part, reports what is
not carried over, then writes; nothing is written until everything is mapped."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laconic_helm.errors import UserError
from laconic_helm.importer.agave import is_agave, map_agave
from laconic_helm.importer.caddy import map_caddy
from laconic_helm.importer.cluster import map_cluster
from laconic_helm.importer.findings import FINDING_ORDER, Finding, Findings
from laconic_helm.importer.reading import DNS_LABEL, Service, SoDeployment, read_deployment
from laconic_helm.importer.takeover import takeover_plan
from laconic_helm.importer.volumes import volume_mounts
from laconic_helm.importer.writing import (
    REPORT_FILE,
    SPEC_FILE,
    next_commands,
    output_files,
    write_files,
)

if TYPE_CHECKING:
    from laconic_helm.output import Reporter

# spec.yml keys the import reads; any other is reported.
READ_SPEC_KEYS = frozenset(
    {
        "stack", "deploy-to", "kind-mount-root", "kind-cluster-name", "namespace", "network",
        "volumes", "configmaps", "config", "resources", "security", "image-registry",
        "image-overrides", "image-pull-policy", "caddy-ingress-image", "replicas", "labels",
        "annotations", "node-affinities", "node-tolerations", "credentials-files",
    }
)  # fmt: skip
# Parts of a deployment dir that only laconic-so's own start ran.
LACONIC_ONLY_PARTS = ("hooks", "compose-jobs", "pods", "configmaps")


@dataclass
class Imported:
    """Everything the import writes and reports, before anything is written."""

    cluster: str
    namespace: str
    service: str
    mode: str
    files: dict[str, str]  # file name in the output folder -> text
    findings: list[Finding]
    takeover: dict[str, Any]


def _report_rest(so: SoDeployment, agave: Service, found: Findings) -> None:
    """Reports the spec keys, services, volumes and parts of the dir that are not carried over."""
    for key in sorted(set(so.spec) - READ_SPEC_KEYS):
        found.add("unmapped", so.spec_key(key), "not carried over")
    if so.spec.get("credentials-files") and not so.env_in_spec:
        found.add("ignored", "spec.yml: credentials-files", "their contents are in config.env")
    for s in so.services:
        if s is not agave:
            found.add(
                "unmapped", f"{s.file}: services.{s.name}", "not imported (no chart for it); "
                "its laconic-so Deployment is left running in the app namespace",
            )  # fmt: skip
    used = set(volume_mounts(agave, Findings()))
    for section in ("volumes", "configmaps"):
        for name in sorted(set(so.section(section)) - used):
            found.add("ignored", so.spec_key(f"{section}.{name}"), "not a volume of the agave "
                      "node; left as it is")  # fmt: skip
    for name in so.extras:
        if name in LACONIC_ONLY_PARTS:
            found.add("unmapped", name, "laconic-so's start hooks, jobs, pod scripts and "
                      "ConfigMap sources are not carried over")  # fmt: skip


def _namespace(so: SoDeployment, override: str | None, found: Findings) -> str:
    """laconic-so's app namespace, which the agave release reuses."""
    why = None
    if override:
        namespace = override
    elif so.spec.get("namespace"):
        namespace = str(so.spec["namespace"])
    elif so.deployment_id:
        namespace = f"laconic-{so.stack_name}"
        why = "deployment.yml has a deployment-id, so laconic-so named it after the stack"
    else:
        namespace = f"laconic-{so.cluster_id}"
        why = "deployment.yml has no deployment-id, so laconic-so named it after the cluster-id"
    if not DNS_LABEL.match(namespace) or len(namespace) > 53:
        source = "--namespace" if override else so.at("spec.yml: namespace")
        raise UserError(f"{source}: {namespace!r} is not a lowercase name of up to 53 characters")
    if why:
        found.add(
            "assumed", "deployment.yml", f"app namespace {namespace}: {why}. Check with `kubectl "
            f"--context kind-{so.cluster_name} get deployments -A -l app={so.app}` and re-run "
            "with --namespace if it differs",
        )  # fmt: skip
    return namespace


def build_import(deployment_dir: Path, out: Path, *, namespace: str | None = None) -> Imported:
    """Reads and maps the deployment; returns the files to write and the report, writing nothing."""
    so = read_deployment(deployment_dir)
    found = Findings()
    agaves = [s for s in so.services if is_agave(s)]
    if not agaves:
        raise UserError(
            f"{so.dir / 'compose'}: no agave service (an image named agave or an AGAVE_MODE "
            "variable) in any compose file"
        )
    agave = agaves[0]
    for extra in agaves[1:]:
        found.add("unmapped", f"{extra.file}: services.{extra.name}", f"a second agave "
                  f"service; only {agave.name} is imported")  # fmt: skip
    cluster = map_cluster(so, found)
    ns = _namespace(so, namespace, found)
    mapped = map_agave(so, agave, cluster, found)
    caddy = map_caddy(so, found)
    _report_rest(so, agave, found)
    takeover = takeover_plan(so, agave, ns, caddy, routes=bool(mapped.values.get("ingress")))
    items = sorted(found.items, key=lambda f: FINDING_ORDER.index(f.kind))
    files = output_files(
        so,
        out,
        service=agave,
        cluster=cluster,
        namespace=ns,
        agave=mapped,
        caddy=caddy,
        takeover=takeover,
        findings=items,
    )
    return Imported(so.cluster_name, ns, agave.name, mapped.mode, files, items, takeover)


def import_laconic_so(
    deployment_dir: Path,
    out: Path,
    reporter: Reporter,
    *,
    force: bool = False,
    namespace: str | None = None,
) -> dict[str, Any]:
    """`laconic-helm import laconic-so`: map, write, report; returns the report's fields."""
    out = Path(os.path.normpath(out.expanduser().absolute()))
    with reporter.step(f"read {deployment_dir}") as rec:
        imported = build_import(deployment_dir, out, namespace=namespace)
        rec.done(
            "ok",
            f"kind cluster {imported.cluster}, service {imported.service} (mode "
            f"{imported.mode}), app namespace {imported.namespace}",
        )
    with reporter.step(f"write {out}") as rec:
        if write_files(out, imported.files, force=force):
            rec.done("changed", ", ".join(imported.files))
        else:
            rec.done("ok", "already imported, unchanged")
    for finding in imported.findings:
        reporter.line(finding.line())
    commands = next_commands(out)
    reporter.line(f"next: {commands[0]}")
    reporter.line(f"then: {commands[1]}")
    return {
        "out": str(out),
        "spec": str(out / SPEC_FILE),
        "report": str(out / REPORT_FILE),
        "files": sorted(imported.files),
        "cluster": imported.cluster,
        "appNamespace": imported.namespace,
        "findings": [asdict(f) for f in imported.findings],
        "takeover": imported.takeover,
        "next": commands,
    }
