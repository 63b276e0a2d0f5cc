"""Maps laconic-so's Caddy to the caddy-ingress release, keeping laconic-so's object names so its
objects and certificate Secrets are adopted in place."""

from __future__ import annotations

from typing import Any

from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import SoDeployment

CADDY_RELEASE = "caddy-ingress"  # the adoption overlay's selector needs this release name
CADDY_NAMESPACE = "caddy-system"
CADDY_NAME = "caddy-ingress-controller"  # laconic-so's name of every Caddy object
CADDY_CERT_BACKUP_DIR = "/mnt/caddy-cert-backup"  # laconic-so's, under the /mnt umbrella mount
# Labels of laconic-so's certificate backup objects (its caddy-cert-backup.yaml).
CERT_BACKUP_SELECTOR = (
    "app.kubernetes.io/name=caddy-cert-backup,app.kubernetes.io/instance=caddy-ingress"
)
LACONIC_CADDY_REPOSITORY = "ghcr.io/laconicnetwork/caddy-ingress"


def map_caddy(so: SoDeployment, found: Findings) -> dict[str, Any]:
    """This deployment's caddy-ingress values (the shipped overlays give laconic-so's names)."""
    values: dict[str, Any] = {}
    network = so.section("network")
    if network.get("acme-email"):
        values["acme"] = {"email": str(network["acme-email"])}
    if so.mount_root:
        # laconic-so's backup file, kept current by the chart from now on.
        values["certBackup"] = {"enabled": True, "hostPath": CADDY_CERT_BACKUP_DIR}
    image = str(so.spec.get("caddy-ingress-image") or f"{LACONIC_CADDY_REPOSITORY}:latest")
    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else ("", "", "")
    if repository and tag not in ("", "latest") and "@" not in image:
        variant = "laconic" if repository == LACONIC_CADDY_REPOSITORY else "upstream"
        values["image"] = {"variant": variant, "repository": repository, "tag": tag}
    else:
        found.add(
            "changed", so.spec_key("caddy-ingress-image"), f"laconic-so ran {image}; the chart "
            "refuses floating tags, so its pinned upstream caddy/ingress runs. To keep the "
            "Laconic fork, set image.variant: laconic and a pinned image.tag in caddy-ingress.yaml",
        )  # fmt: skip
    for key in sorted(set(network) - {"http-proxy", "ports", "acme-email"}):
        found.add("unmapped", so.spec_key(f"network.{key}"), "no equivalent")
    return values
