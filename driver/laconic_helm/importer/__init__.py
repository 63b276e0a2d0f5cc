"""Imports a laconic-so deployment dir as a laconic-helm spec, values overlays and a report.

laconic-so keeps a deployment in one folder: spec.yml, deployment.yml (cluster-id), kind-config.yml,
config.env and compose/*.yml. The import maps the kind cluster as it was created (same name, port
mappings and mounts, so the next deploy reuses it instead of a 5-10 minute rebuild), the agave
service to the agave chart (its data volumes as hostPath volumes at the same node paths, so the
ledger in place is used) and Caddy to the caddy-ingress chart with laconic-so's object names (so
its objects and certificate Secrets are adopted in place). Each release's `retire` section names
the laconic-so objects it replaces (the node's Deployment, Services and Ingress; the certificate
backup job), which the deploy removes once the release is up. Whatever has no equivalent is
listed in the report, never dropped in silence. Keypairs are named by path, never copied, and
nothing is written until everything is mapped.

reading reads the dir; cluster, agave (with environment, volumes and pod), caddy and takeover
map its parts; writing makes and writes the files; command runs the import.
"""

from laconic_helm.importer.agave import METRICS_FILE
from laconic_helm.importer.caddy import LACONIC_CADDY_REPOSITORY
from laconic_helm.importer.command import build_import, import_laconic_so
from laconic_helm.importer.environment import service_env
from laconic_helm.importer.reading import Service, parse_env_file
from laconic_helm.importer.takeover import OLD_NODE_GRACE
from laconic_helm.importer.writing import AGAVE_VALUES, CADDY_VALUES, REPORT_FILE, SPEC_FILE

__all__ = [
    "AGAVE_VALUES",
    "CADDY_VALUES",
    "LACONIC_CADDY_REPOSITORY",
    "METRICS_FILE",
    "OLD_NODE_GRACE",
    "REPORT_FILE",
    "SPEC_FILE",
    "Service",
    "build_import",
    "import_laconic_so",
    "parse_env_file",
    "service_env",
]
