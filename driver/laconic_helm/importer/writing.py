"""Turns what was mapped into the output files (deployment.yaml, the values files, the metrics
config, import-report.yaml) and writes them, all or nothing, private (0600)."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from laconic_helm.errors import UserError
from laconic_helm.importer.agave import AGAVE_RELEASE, METRICS_FILE, Agave
from laconic_helm.importer.caddy import CADDY_NAMESPACE, CADDY_RELEASE, CERT_BACKUP_SELECTOR
from laconic_helm.importer.findings import Finding
from laconic_helm.importer.reading import Service, SoDeployment
from laconic_helm.importer.takeover import OLD_NODE_GRACE

SPEC_FILE = "deployment.yaml"
REPORT_FILE = "import-report.yaml"
AGAVE_VALUES = "agave.yaml"
CADDY_VALUES = "caddy-ingress.yaml"
# Shipped overlays of the caddy-ingress chart, copied into the output as caddy-ingress-<name>:
# kind mode (host ports 80/443 on the ingress-ready node), then laconic-so's object names.
CADDY_OVERLAYS = ("kind.yaml", "laconic-so-adopt.yaml")


def _dump(doc: Any, header: str, *, compact: bool = False) -> str:
    """YAML under a comment header; `compact` puts each all-scalar mapping on one line."""
    flow, width = (None, 4096) if compact else (False, 100)
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, width=width)
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comment + body


def next_commands(out: Path) -> list[str]:
    """The commands that take the live laconic-so deployment over, in order."""
    spec = shlex.quote(str(out / SPEC_FILE))
    return [
        f"laconic-helm plan --spec {spec} --adopt-cluster",
        f"laconic-helm deploy --spec {spec} --adopt-cluster",
    ]


def _retire(selector: str, objects: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """A release's `retire` section: laconic-so's objects, removed once the release is up."""
    from laconic_helm.spec import RETIRABLE

    return {
        "selector": selector,
        **extra,
        "objects": [{"apiVersion": RETIRABLE[o["kind"]], **o} for o in objects],
    }


def _spec_doc(
    cluster: dict[str, Any],
    namespace: str,
    agave: Agave,
    caddy_files: list[str],
    takeover: Mapping[str, Any],
) -> dict[str, Any]:
    caddy: dict[str, Any] = {
        "name": CADDY_RELEASE,
        "chart": "builtin:caddy-ingress",
        "namespace": CADDY_NAMESPACE,
        "valuesFiles": [*caddy_files, CADDY_VALUES],
    }
    if takeover["removeAfterCaddyRelease"]:
        caddy["retire"] = _retire(CERT_BACKUP_SELECTOR, takeover["removeAfterCaddyRelease"])
    release: dict[str, Any] = {
        "name": AGAVE_RELEASE,
        "chart": "builtin:agave",
        "namespace": namespace,
        "valuesFiles": [AGAVE_VALUES],
    }
    if agave.secrets:
        release["secrets"] = agave.secrets
    if agave.image:
        release["images"] = [agave.image]
    # A real node catches up for minutes to hours after a start (`status` shows when it is
    # ready), and during the takeover it waits for laconic-so's pod to free the host ports.
    release["wait"] = agave.mode == "test"
    release["retire"] = _retire(
        takeover["appSelector"],
        takeover["removeAfterAgaveDeployment"],
        gracePeriodSeconds=OLD_NODE_GRACE,
    )
    doc: dict[str, Any] = {"cluster": cluster, "images": [agave.image] if agave.image else []}
    if agave.image:
        # laconic-so loaded the image straight into the node: streaming keeps the node's name
        # for it, where a registry would pull it again under another and restart the node.
        doc["imageDelivery"] = {"mode": "stream"}
    return {**doc, "releases": [caddy, release]}


def output_files(
    so: SoDeployment,
    out: Path,
    *,
    service: Service,
    cluster: dict[str, Any],
    namespace: str,
    agave: Agave,
    caddy: dict[str, Any],
    takeover: dict[str, Any],
    findings: list[Finding],
) -> dict[str, str]:
    """File name in `out` -> text: the spec, values, metrics config and report to write."""
    from laconic_helm.spec import data_dir

    source = f"laconic-so deployment {so.dir}"
    caddy_files = [f"caddy-ingress-{name}" for name in CADDY_OVERLAYS]
    commands = next_commands(out)
    files = {
        SPEC_FILE: _dump(
            _spec_doc(cluster, namespace, agave, caddy_files, takeover),
            f"laconic-helm deployment imported from {source}.\n"
            "The cluster is laconic-so's kind cluster as it was created; take it over with:\n"
            f"  {commands[0]}\n  {commands[1]}\n"
            f"What could not be carried over is listed in {REPORT_FILE}.",
            compact=True,
        ),
        AGAVE_VALUES: _dump(
            agave.values,
            f"agave chart values imported from {source}:\n"
            f"service {service.name} of {service.file}, with the environment laconic-so gave it.",
        ),
        CADDY_VALUES: _dump(
            caddy,
            f"caddy-ingress values imported from {source},\n"
            f"applied after {' and '.join(caddy_files)}.",
        ),
    }
    if agave.metrics:
        files[METRICS_FILE] = agave.metrics
    for name, target in zip(CADDY_OVERLAYS, caddy_files, strict=True):
        shipped = (data_dir("values") / "caddy-ingress" / name).read_text()
        files[target] = f"# Copied by the import from laconic-helm's values/caddy-ingress/{name}.\n"
        files[target] += shipped
    report = {
        "source": str(so.dir),
        "cluster": so.cluster_name,
        "appNamespace": namespace,
        "agaveService": service.name,
        "mode": agave.mode,
        "next": commands,
        "findings": [asdict(f) for f in findings],
    }
    files[REPORT_FILE] = _dump(
        report,
        f"What `laconic-helm import laconic-so` made of {source}.\n"
        "findings: unmapped = had an effect and has no equivalent here (decide what to do);\n"
        "changed = carried over, but behaves differently; assumed = a guess to check;\n"
        "ignored = had no effect under laconic-so either.\n"
        "takeover: the laconic-so objects the first deploy adopts, removes or keeps.",
    ) + _dump({"takeover": takeover}, "", compact=True)
    return files


def _holds(out: Path, files: Mapping[str, str]) -> bool:
    try:
        return all((out / name).read_text() == text for name, text in files.items())
    except OSError:
        return False


def write_files(out: Path, files: Mapping[str, str], *, force: bool) -> bool:
    """Writes the files into `out`; returns False when it already holds exactly these.

    They go to a sibling temp folder first and the spec is loaded there, so a refused or failed
    import leaves `out` as it was.
    """
    from laconic_helm.spec import load_spec

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / SPEC_FILE).exists():
        if _holds(out, files):
            return False
        if not force:
            raise UserError(f"{out / SPEC_FILE}: already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)
            (tmp / name).chmod(0o600)  # the metrics config holds a password; the rest is private
        load_spec(tmp / SPEC_FILE, secret_files=False)  # a keypair may be on the node's host
        if out.exists():
            for name in files:
                (tmp / name).replace(out / name)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
