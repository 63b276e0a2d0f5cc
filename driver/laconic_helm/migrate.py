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
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from laconic_helm.errors import UserError

if TYPE_CHECKING:
    from laconic_helm.output import Reporter

SPEC_FILE = "deployment.yaml"
REPORT_FILE = "import-report.yaml"
AGAVE_VALUES = "agave.yaml"
CADDY_VALUES = "caddy-ingress.yaml"
# Shipped overlays of the caddy-ingress chart, copied into the output as caddy-ingress-<name>:
# kind mode (host ports 80/443 on the ingress-ready node), then laconic-so's object names.
CADDY_OVERLAYS = ("kind.yaml", "laconic-so-adopt.yaml")

CADDY_RELEASE = "caddy-ingress"  # the adoption overlay's selector needs this release name
CADDY_NAMESPACE = "caddy-system"
CADDY_NAME = "caddy-ingress-controller"  # laconic-so's name of every Caddy object
AGAVE_RELEASE = "agave"
IDENTITY_SECRET = "agave-identity"
# SOLANA_METRICS_CONFIG carries the InfluxDB password: it becomes a Secret made from a private
# file beside the spec, never a value (the chart refuses it as a plain env value).
METRICS_ENV = "SOLANA_METRICS_CONFIG"
METRICS_SECRET = "agave-metrics"
METRICS_FILE = "agave-metrics-config"
VOTE_SECRET = "agave-vote"
MEMLOCK_RUNTIME = "high-memlock"
CADDY_CERT_BACKUP_DIR = "/mnt/caddy-cert-backup"  # laconic-so's, under the /mnt umbrella mount
# Labels of laconic-so's certificate backup objects (its caddy-cert-backup.yaml).
CERT_BACKUP_SELECTOR = (
    "app.kubernetes.io/name=caddy-cert-backup,app.kubernetes.io/instance=caddy-ingress"
)
# Seconds laconic-so's agave pod gets to stop when it is retired: the chart's own stop period
# (its entrypoint runs `agave-validator exit` on SIGTERM). It ends as soon as agave has exited.
OLD_NODE_GRACE = 600
LACONIC_CADDY_REPOSITORY = "ghcr.io/laconicnetwork/caddy-ingress"

# Where the agave image keeps its data, and the agave chart volume each folder becomes.
DATA_VOLUMES = {
    "/data/config": "config",
    "/data/ledger": "ledger",
    "/data/accounts": "accounts",
    "/data/snapshots": "snapshots",
    "/data/log": "log",
}
REAL_NODE_VOLUMES = ("ledger", "accounts", "snapshots", "log", "config")
TEST_VOLUMES = ("ledger", "log", "config")
IDENTITY_IN_CONTAINER = "/data/config/validator-identity.json"
VOTE_IN_CONTAINER = "/data/config/vote-account-keypair.json"
MIN_PORT_RANGE = 26  # agave >= 4.1 refuses a narrower dynamic port range; the chart checks it

# The image's entrypoint turned these into agave flags; here they become chart values and flags.
MAPPED_ENV = frozenset(
    {
        "AGAVE_MODE", "VALIDATOR_ENTRYPOINT", "KNOWN_VALIDATOR", "EXTRA_ENTRYPOINTS",
        "EXTRA_KNOWN_VALIDATORS", "RPC_PORT", "RPC_BIND_ADDRESS", "GOSSIP_PORT",
        "DYNAMIC_PORT_RANGE", "EXPECTED_GENESIS_HASH", "EXPECTED_SHRED_VERSION",
        "LIMIT_LEDGER_SIZE", "NO_SNAPSHOTS", "SNAPSHOT_INTERVAL_SLOTS",
        "MAXIMUM_SNAPSHOTS_TO_RETAIN", "NO_INCREMENTAL_SNAPSHOTS", "ACCOUNT_INDEXES",
        "BIND_ADDRESS", "PUBLIC_RPC_ADDRESS", "VOTE_ACCOUNT_KEYPAIR", "EXTRA_ARGS", "JITO_ENABLE",
    }
)  # fmt: skip
# Jito flags, which the entrypoint added only with JITO_ENABLE=true (the relayer: validator only).
JITO_FLAGS = {
    "JITO_TIP_PAYMENT_PROGRAM": "tip-payment-program-pubkey",
    "JITO_DISTRIBUTION_PROGRAM": "tip-distribution-program-pubkey",
    "JITO_MERKLE_ROOT_AUTHORITY": "merkle-root-upload-authority",
    "JITO_COMMISSION_BPS": "commission-bps",
    "JITO_BLOCK_ENGINE_URL": "block-engine-url",
    "JITO_SHRED_RECEIVER_ADDR": "shred-receiver-address",
    "JITO_RELAYER_URL": "relayer-url",
}
_DOWNLOAD = "the entrypoint's snapshot download (aria2c) before agave starts"
_LEAPFROG = "the entrypoint's restart with a fresh snapshot when the node falls behind"
_TEST_SCRIPT = "the test mode's start-test.sh"
# Read by the entrypoint's own machinery, which no longer runs: the chart starts agave directly.
ENTRYPOINT_ONLY_ENV = {
    "SNAPSHOT_AUTO_DOWNLOAD": _DOWNLOAD,
    "SNAPSHOT_MAX_AGE_SLOTS": _DOWNLOAD,
    "SNAPSHOT_CONVERGENCE_SLOTS": _DOWNLOAD,
    "SNAPSHOT_RETRY_DELAY": _DOWNLOAD,
    "SNAPSHOT_LEAPFROG_SLOTS": _LEAPFROG,
    "SNAPSHOT_LEAPFROG_CHECKS": _LEAPFROG,
    "SNAPSHOT_MONITOR_INTERVAL": _LEAPFROG,
    "SNAPSHOT_MONITOR_GRACE": _LEAPFROG,
    "SKIP_IP_ECHO_PREFLIGHT": "the entrypoint's ip-echo preflight check",
    "FACILITATOR_PUBKEY": _TEST_SCRIPT,
    "SERVER_PUBKEY": _TEST_SCRIPT,
    "CLIENT_PUBKEY": _TEST_SCRIPT,
    "MINT_DECIMALS": _TEST_SCRIPT,
    "MINT_AMOUNT": _TEST_SCRIPT,
}
# Variables nothing read under laconic-so, and why.
_HEALTHCHECK = "read by the compose healthcheck only, which laconic-so never made a probe"
INERT_ENV = {
    "PROBE_GRACE_SECONDS": _HEALTHCHECK,
    "PROBE_MAX_SLOT_LAG": _HEALTHCHECK,
    "PUBLIC_TVU_ADDRESS": "the entrypoint never reads it",
}
# agave-validator reads these itself; they go into the chart's `env`.
AGAVE_ENV_PREFIXES = ("RUST_", "SOLANA_")

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
# spec.yml keys the import reads; any other is reported.
READ_SPEC_KEYS = frozenset(
    {
        "stack", "deploy-to", "kind-mount-root", "kind-cluster-name", "namespace", "network",
        "volumes", "configmaps", "config", "resources", "security", "image-registry",
        "image-overrides", "image-pull-policy", "caddy-ingress-image", "replicas", "labels",
        "annotations", "node-affinities", "node-tolerations", "credentials-files",
    }
)  # fmt: skip
KIND_CONFIG_KEYS = frozenset({"kind", "apiVersion", "name", "nodes", "containerdConfigPatches"})
KIND_NODE_KEYS = frozenset(
    {"role", "image", "labels", "kubeadmConfigPatches", "extraPortMappings", "extraMounts"}
)
# Parts of a deployment dir that only laconic-so's own start ran.
LACONIC_ONLY_PARTS = ("hooks", "compose-jobs", "pods", "configmaps")

# laconic-so's resources for a container that names none.
DEFAULT_RESOURCES = {
    "reservations": {"cpus": "1.0", "memory": "2000M"},
    "limits": {"cpus": "4.0", "memory": "8000M"},
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WHOLE_VAR = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?\}$")
_MEMLOCK_PATCH = re.compile(rf'runtimes\.(?:"{MEMLOCK_RUNTIME}"|{MEMLOCK_RUNTIME})\]')
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtTpPeE]?)(i?)[bB]?\s*$")
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

FindingKind = Literal["unmapped", "changed", "assumed", "ignored"]
FINDING_ORDER = ("unmapped", "changed", "assumed", "ignored")  # what needs a decision first
# unmapped: had an effect under laconic-so and has no equivalent here: the operator decides.
# changed: carried over, but it behaves differently now (the finding says how).
# assumed: a guess the files cannot settle; the finding says how to check it.
# ignored: had no effect under laconic-so either, so nothing is lost.


@dataclass(frozen=True)
class Finding:
    """One line of the report: where in the deployment dir, and what became of it."""

    kind: FindingKind
    where: str
    what: str

    def line(self) -> str:
        return f"{self.kind:<8} {self.where}: {self.what}"


@dataclass
class _Findings:
    items: list[Finding] = field(default_factory=list)

    def add(self, kind: FindingKind, where: str, what: str) -> None:
        finding = Finding(kind, where, what)
        if finding not in self.items:
            self.items.append(finding)


@dataclass(frozen=True)
class Service:
    """One compose service: the pod (compose file) it runs in and its definition."""

    name: str
    pod: str
    file: str  # relative to the deployment dir
    doc: Mapping[str, Any]

    def key(self, key: str) -> str:
        return f"{self.file}: services.{self.name}.{key}"


@dataclass(frozen=True)
class SoDeployment:
    """What a laconic-so deployment dir says, read and type-checked; nothing mapped yet."""

    dir: Path
    spec: Mapping[str, Any]
    cluster_id: str
    deployment_id: str | None
    kind_config: Mapping[str, Any]
    env: Mapping[str, str]  # config.env: what laconic-so put into every container
    env_in_spec: bool  # no config.env: `env` is spec.yml's `config`
    pods: tuple[str, ...]
    services: tuple[Service, ...]
    stack_containers: tuple[str, ...]
    extras: tuple[str, ...]  # names in the dir the import does not read

    @property
    def app(self) -> str:
        """laconic-so's app name: the prefix of its object names and its `app` label."""
        return self.deployment_id or self.cluster_id

    @property
    def stack_name(self) -> str:
        return Path(str(self.spec.get("stack") or "")).name

    @property
    def cluster_name(self) -> str:
        return str(self.spec.get("kind-cluster-name") or self.cluster_id)

    @property
    def mount_root(self) -> str | None:
        root = self.spec.get("kind-mount-root")
        return _absolute(str(root), self.dir) if root else None

    def spec_key(self, key: str) -> str:
        """A spec.yml key as the report names it."""
        return f"spec.yml: {key}"

    def at(self, where: str) -> str:
        """A report location (`file: key`) made absolute, for error messages."""
        return f"{self.dir}/{where}"

    def section(self, key: str) -> dict[str, Any]:
        """A mapping of spec.yml (empty when absent); raises naming the key when it is not one."""
        return _mapping(self.spec.get(key), self.at(self.spec_key(key)))

    def deployment_name(self, pod: str) -> str:
        return f"{self.app}-deployment" if len(self.pods) == 1 else f"{self.app}-{pod}-deployment"

    def service_name(self, pod: str) -> str:
        return f"{self.app}-service" if len(self.pods) == 1 else f"{self.app}-{pod}-service"


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


# -- reading ---------------------------------------------------------------------------------


def _absolute(path: str, base: Path) -> str:
    """`path` made absolute against `base` (laconic-so's rule for relative paths), normalised."""
    p = Path(path).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)


def _load_yaml(path: Path, *, required: bool) -> Any:
    if not path.exists():
        if required:
            raise UserError(f"{path}: does not exist; is this a laconic-so deployment dir?")
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: {where}not valid YAML ({problem})") from None


def _mapping(value: Any, where: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def parse_env_file(text: str, where: str) -> dict[str, str]:
    """Parses a config.env: `KEY=value` lines, `#` comments, optional quotes and `export`."""
    env: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not eq or not _ENV_NAME.match(key):
            raise UserError(f"{where}: line {n}: expected KEY=value, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def _pod_name(compose_file: Path) -> str:
    return compose_file.stem.removeprefix("docker-compose-")


def read_deployment(deployment_dir: Path) -> SoDeployment:
    """Reads and type-checks a laconic-so k8s-kind deployment dir; raises UserError naming the
    file and key of the first problem. It only reads."""
    d = Path(os.path.normpath(deployment_dir.expanduser().absolute()))
    if not d.exists():
        raise UserError(f"{d}: no such deployment dir")
    if not d.is_dir():
        raise UserError(f"{d}: is not a folder; --dir takes a laconic-so deployment dir")
    spec_path = d / "spec.yml"
    spec = _mapping(_load_yaml(spec_path, required=True), str(spec_path), optional=False)
    if spec.get("deploy-to") != "k8s-kind":
        raise UserError(
            f"{spec_path}: deploy-to: {spec.get('deploy-to')!r} is not supported; only "
            "k8s-kind deployments can be imported"
        )
    path = d / "deployment.yml"
    deployment = _mapping(_load_yaml(path, required=True), str(path), optional=False)
    cluster_id = deployment.get("cluster-id")
    if not isinstance(cluster_id, str) or not _DNS_LABEL.match(cluster_id):
        raise UserError(
            f"{path}: cluster-id: expected the kind cluster's lowercase name (a-z, 0-9, '-'), "
            f"got {cluster_id!r}"
        )
    deployment_id = deployment.get("deployment-id")
    if deployment_id is not None and not (
        isinstance(deployment_id, str) and _DNS_LABEL.match(deployment_id)
    ):
        raise UserError(f"{path}: deployment-id: expected a lowercase name, got {deployment_id!r}")
    path = d / "kind-config.yml"
    kind_config = _mapping(_load_yaml(path, required=True), str(path), optional=False)
    _list(kind_config.get("nodes"), f"{path}: nodes")
    path = d / "config.env"
    if path.is_file():
        env = parse_env_file(path.read_text(), str(path))
    else:
        config = _mapping(spec.get("config"), f"{spec_path}: config")
        env = {k: "" if v is None else str(v) for k, v in config.items()}
    compose_dir = d / "compose"
    files = sorted([*compose_dir.glob("*.yml"), *compose_dir.glob("*.yaml")])
    if not files:
        raise UserError(f"{compose_dir}: no compose files (*.yml); is this a deployment dir?")
    services: list[Service] = []
    for f in files:
        doc = _mapping(_load_yaml(f, required=True), str(f), optional=False)
        for name, body in _mapping(doc.get("services"), f"{f}: services").items():
            body_map = _mapping(body, f"{f}: services.{name}")
            services.append(Service(name, _pod_name(f), str(f.relative_to(d)), body_map))
    path = d / "stack.yml"
    stack = _mapping(_load_yaml(path, required=False), str(path))
    containers = tuple(str(c) for c in _list(stack.get("containers"), f"{path}: containers"))
    read = {"spec.yml", "deployment.yml", "kind-config.yml", "config.env", "compose", "stack.yml"}
    return SoDeployment(
        dir=d,
        spec=spec,
        cluster_id=cluster_id,
        deployment_id=deployment_id,
        kind_config=kind_config,
        env=env,
        env_in_spec=not (d / "config.env").is_file(),
        pods=tuple(dict.fromkeys(_pod_name(f) for f in files)),
        services=tuple(services),
        stack_containers=containers,
        extras=tuple(sorted(p.name for p in d.iterdir() if p.name not in read)),
    )


# -- the cluster -----------------------------------------------------------------------------


def _node_labels(node: Mapping[str, Any], where: str, found: _Findings) -> dict[str, str]:
    """The node's labels: kind's `labels` plus laconic-so's kubeadm `node-labels` patch."""
    labels = {str(k): str(v) for k, v in _mapping(node.get("labels"), where).items()}
    for i, patch in enumerate(_list(node.get("kubeadmConfigPatches"), where)):
        try:
            doc = yaml.safe_load(patch) if isinstance(patch, str) else None
        except yaml.YAMLError:
            doc = None
        registration = doc.get("nodeRegistration") if isinstance(doc, dict) else None
        args = registration.get("kubeletExtraArgs") if isinstance(registration, dict) else None
        if isinstance(args, list):  # kubeadm v1beta4: a list of {name, value}
            args = {a.get("name"): a.get("value") for a in args if isinstance(a, dict)}
        labels_only = (
            isinstance(args, dict)
            and set(args) == {"node-labels"}
            and set(registration or {}) == {"kubeletExtraArgs"}
        )
        if not labels_only:
            found.add(
                "unmapped", f"{where}.kubeadmConfigPatches[{i}]", "kubeadm patch other than node "
                "labels; the live node keeps it, a rebuilt one would not have it",
            )  # fmt: skip
        if isinstance(args, dict) and "node-labels" in args:
            for pair in str(args["node-labels"]).split(","):
                key, eq, value = pair.strip().partition("=")
                if key and eq:
                    labels[key] = value
    return labels


def map_cluster(so: SoDeployment, found: _Findings) -> dict[str, Any]:
    """The spec's `cluster`: laconic-so's kind cluster with its ports and mounts as created."""
    config = "kind-config.yml"
    for key in sorted(set(so.kind_config) - KIND_CONFIG_KEYS):
        found.add("unmapped", f"{config}: {key}", "kind setting not carried over")
    name = so.kind_config.get("name")
    if name and name != so.cluster_name:
        found.add(
            "assumed",
            f"{config}: name",
            f"says {name!r}, but laconic-so runs the cluster {so.cluster_name!r}; using that",
        )
    nodes = [
        _mapping(n, so.at(f"{config}: nodes[{i}]"), optional=False)
        for i, n in enumerate(_list(so.kind_config.get("nodes"), so.at(f"{config}: nodes")))
    ] or [{"role": "control-plane"}]
    roles = [n.get("role", "control-plane") for n in nodes]
    if "control-plane" not in roles:
        raise UserError(f"{so.at(config)}: nodes: no control-plane node")
    cp = roles.index("control-plane")
    for i, role in enumerate(roles):
        if i != cp:
            found.add(
                "unmapped", f"{config}: nodes[{i}]", f"{role} node: the spec describes the "
                "control-plane node only (the live cluster keeps its other nodes)",
            )  # fmt: skip
    node, at = nodes[cp], f"{config}: nodes[{cp}]"
    for key in sorted(set(node) - KIND_NODE_KEYS):
        found.add("unmapped", f"{at}.{key}", "node setting not carried over")
    ports = []
    for i, p in enumerate(_list(node.get("extraPortMappings"), so.at(at))):
        pm = _mapping(p, so.at(f"{at}.extraPortMappings[{i}]"), optional=False)
        if not pm.get("hostPort"):
            found.add(
                "unmapped", f"{at}.extraPortMappings[{i}]", "no fixed hostPort (kind chose one "
                "at random); a spec port mapping needs a fixed one",
            )  # fmt: skip
            continue
        ports.append(
            {
                "containerPort": pm.get("containerPort"),
                "hostPort": pm["hostPort"],
                "protocol": str(pm.get("protocol") or "TCP").upper(),
                "listenAddress": str(pm.get("listenAddress") or "0.0.0.0"),
            }
        )
    patches = _list(so.kind_config.get("containerdConfigPatches"), so.at(config))
    memlock = False
    for i, patch in enumerate(patches):
        if isinstance(patch, str) and _MEMLOCK_PATCH.search(patch):
            memlock = True
        else:
            found.add(
                "unmapped", f"{config}: containerdConfigPatches[{i}]", "containerd patch other "
                f"than laconic-so's {MEMLOCK_RUNTIME} runtime; a rebuilt cluster would lack it",
            )  # fmt: skip
    mounts: list[dict[str, Any]] = []
    for i, m in enumerate(_list(node.get("extraMounts"), so.at(at))):
        mm = _mapping(m, so.at(f"{at}.extraMounts[{i}]"), optional=False)
        host = _absolute(str(mm.get("hostPath", "")), so.dir)
        if memlock and Path(host).name == "high-memlock-spec.json":
            found.add(
                "changed", f"{at}.extraMounts[{i}]", f"the {MEMLOCK_RUNTIME} runtime's base spec "
                f"{host} becomes highMemlock: true; the live node still reads that file, so keep "
                "it while this cluster lives",
            )  # fmt: skip
            continue
        for key in sorted(set(mm) - {"hostPath", "containerPath", "readOnly", "propagation"}):
            found.add("unmapped", f"{at}.extraMounts[{i}].{key}", "mount option not carried over")
        mount = {
            "hostPath": host,
            "containerPath": str(mm.get("containerPath", "")),
            "readOnly": bool(mm.get("readOnly", False)),
            "propagation": str(mm.get("propagation") or "None"),
        }
        if mount not in mounts:
            mounts.append(mount)
    doc: dict[str, Any] = {"name": so.cluster_name, "provider": "kind"}
    if node.get("image"):
        doc["nodeImage"] = str(node["image"])
    doc["ports"] = ports
    doc["mounts"] = mounts
    doc["nodeLabels"] = _node_labels(node, at, found)
    doc["highMemlock"] = memlock
    return doc


def node_path(host_path: str, cluster: Mapping[str, Any]) -> str | None:
    """Where the kind node sees `host_path` through its mounts (the longest match), or None."""
    pairs = sorted(
        ((m["hostPath"].rstrip("/"), m["containerPath"].rstrip("/")) for m in cluster["mounts"]),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    for host, inside in pairs:
        if host_path == host or host_path.startswith(host + "/"):
            return (inside + host_path[len(host) :]) or "/"
    return None


# -- the agave service -----------------------------------------------------------------------


def _env_keys(service: Service) -> list[str]:
    raw = service.doc.get("environment")
    if isinstance(raw, Mapping):
        return [str(k) for k in raw]
    if isinstance(raw, list):
        return [str(item).partition("=")[0] for item in raw]
    return []


def _is_agave(service: Service) -> bool:
    image = str(service.doc.get("image") or "")
    name = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return name == "agave" or "AGAVE_MODE" in _env_keys(service)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """laconic-so's expansion: a whole-value `${VAR}`, `${VAR:-d}` or `${VAR-d}` from config.env."""
    match = _WHOLE_VAR.match(value)
    if match is None:
        return value
    name, op, default = match.groups()
    if op == ":-":
        return env.get(name) or default
    if op == "-":
        return env.get(name, default)
    return env.get(name, "")


def service_env(service: Service, env: Mapping[str, str]) -> dict[str, str]:
    """The environment laconic-so gave the container: compose values expanded, config.env on
    top, empty values dropped."""
    raw = service.doc.get("environment")
    pairs: dict[str, str] = {}
    if isinstance(raw, Mapping):
        pairs = {str(k): "" if v is None else str(v) for k, v in raw.items()}
    elif isinstance(raw, list):
        pairs = dict(str(item).partition("=")[::2] for item in raw)
    merged = {k: _expand(v, env) for k, v in pairs.items()} | dict(env)
    return {k: v for k, v in merged.items() if v != ""}


@dataclass(frozen=True)
class _EnvAt:
    """Names where a variable of the node's environment came from, for report and errors."""

    so: SoDeployment
    service: Service

    def __call__(self, key: str) -> str:
        if key in self.so.env:
            return f"spec.yml: config.{key}" if self.so.env_in_spec else f"config.env: {key}"
        return self.service.key(f"environment.{key}")

    def error(self, key: str, message: str) -> UserError:
        return UserError(f"{self.so.at(self(key))}: {message}")


def _quantity(value: Any, what: str, where: str, found: _Findings) -> str | None:
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


def _resources(so: SoDeployment, service: Service, found: _Findings) -> dict[str, Any]:
    """laconic-so's order: spec per container, compose deploy.resources, spec global, default."""
    key = "resources.containers"
    containers = _mapping(so.section("resources").get("containers"), so.at(so.spec_key(key)))
    per_container = containers.get(service.name)
    deploy = _mapping(service.doc.get("deploy"), so.at(service.key("deploy")))
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
        block = _mapping(chosen.get(side), so.at(f"{where}.{side}"))
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


def _volume_mounts(service: Service, found: _Findings) -> dict[str, str]:
    """Named volume -> container path, from the service's short-syntax volume entries."""
    mounts: dict[str, str] = {}
    for i, entry in enumerate(_list(service.doc.get("volumes"), service.key("volumes"))):
        where = service.key(f"volumes[{i}]")
        if not isinstance(entry, str):
            found.add("ignored", where, "long volume syntax, which laconic-so does not read")
            continue
        source, _, rest = entry.partition(":")
        target = rest.split(":", 1)[0]
        if source.startswith(("/", ".", "~")):
            found.add(
                "unmapped", where, f"host file bind {source} -> {target} (a ConfigMap under "
                "laconic-so): the agave chart mounts no such file",
            )  # fmt: skip
            continue
        mounts[source] = target
    return mounts


@dataclass(frozen=True)
class _Volume:
    name: str  # the compose named volume
    host: str | None  # folder on the host; None: a laconic-so provisioner claim
    node: str | None  # the same folder inside the kind node


def _volumes(
    so: SoDeployment, service: Service, cluster: Mapping[str, Any], found: _Findings
) -> dict[str, _Volume]:
    """Container path -> the volume there, with its host folder and node path."""
    spec_volumes = so.section("volumes")
    configmaps = so.section("configmaps")
    out: dict[str, _Volume] = {}
    for name, target in _volume_mounts(service, found).items():
        if name in configmaps:
            found.add(
                "unmapped", so.spec_key(f"configmaps.{name}"), f"ConfigMap at {target} in "
                f"{service.name}: the agave chart mounts no ConfigMap",
            )  # fmt: skip
            continue
        path = spec_volumes.get(name)
        if not path:
            out[target] = _Volume(name, None, None)
            continue
        host = _absolute(str(path), so.dir)
        inside = node_path(host, cluster)
        if inside is None:
            root = so.mount_root
            under_root = root and host.startswith(root.rstrip("/") + "/")
            inside = "/mnt/" + (os.path.relpath(host, root) if root and under_root else name)
            found.add(
                "changed", so.spec_key(f"volumes.{name}"), f"{host} is not mounted into the kind "
                f"node: its data lives inside the node container at {inside}, as under "
                "laconic-so, and goes with the cluster",
            )  # fmt: skip
        out[target] = _Volume(name, host, inside)
    return out


def _keypair(
    what: str,
    container_path: str,
    volumes: Mapping[str, _Volume],
    error: Callable[[str], UserError],
    found: _Findings,
) -> tuple[Path, int | None]:
    """The host file of a keypair the node reads, and its group (None when the file is not on
    this host: an import may run off the node's host, the deploy's spec check then refuses
    until the file is there)."""
    for target, volume in sorted(volumes.items(), key=lambda kv: len(kv[0]), reverse=True):
        prefix = target.rstrip("/") + "/"
        if container_path.startswith(prefix) and volume.host:
            path = Path(volume.host) / container_path.removeprefix(prefix)
            break
    else:
        raise error(
            f"the {what} keypair {container_path} is not in a volume with a host path, so "
            "laconic-helm cannot make a Secret of it; give that volume a host path in spec.yml"
        )
    try:
        info = path.stat()
    except OSError:
        found.add(
            "assumed", str(path), f"the {what} keypair ({container_path} in the node, volume "
            f"{volume.name}) is not on this host; the spec names it there, and `laconic-helm "
            "deploy` refuses to start until it is (import on the node's host to also carry over "
            "its group as fsGroup; laconic-so's rpc mode made the identity at first start)",
        )  # fmt: skip
        return path, None
    if not path.is_file():
        raise UserError(f"{path}: the {what} keypair is not a file")
    return path, info.st_gid


def _scalar(value: str) -> str | int:
    return int(value) if re.fullmatch(r"-?[1-9][0-9]*|0", value) else value


def parse_args(text: str, where: str, found: _Findings) -> dict[str, Any]:
    """EXTRA_ARGS, split on whitespace as the entrypoint did, as a flag map of the chart."""
    flags: dict[str, Any] = {}
    tokens = text.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            found.add("unmapped", where, f"argument {token!r} is not a --flag; left out")
            continue
        name, eq, inline = token[2:].partition("=")
        value: Any = True
        if eq:
            value = _scalar(inline)
        elif i < len(tokens) and not tokens[i].startswith("-"):
            value = _scalar(tokens[i])
            i += 1
        if name in flags and value is not True:
            before = flags[name]
            flags[name] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            flags[name] = value
    return flags


def _port_range(value: str, at: _EnvAt, taken: tuple[int, ...], found: _Findings) -> str:
    key = "DYNAMIC_PORT_RANGE"
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
    if match is None:
        raise at.error(key, f"expected START-END, got {value!r}")
    start, end = int(match[1]), int(match[2])
    if end - start >= MIN_PORT_RANGE:
        return f"{start}-{end}"
    wider = start + MIN_PORT_RANGE
    if wider > 65535 or any(start <= p < wider for p in taken):
        raise at.error(
            key, f"{value} is {end - start} ports wide and agave needs {MIN_PORT_RANGE}, but "
            f"{start}-{wider} would take the RPC, WebSocket or gossip port; choose another range",
        )  # fmt: skip
    found.add(
        "changed", at(key), f"{value} is {end - start} ports wide; agave needs at least "
        f"{MIN_PORT_RANGE}, so it is {start}-{wider} now (the cluster publishes the same ports)",
    )  # fmt: skip
    return f"{start}-{wider}"


def _whole(value: str, at: _EnvAt, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise at.error(key, f"expected a whole number, got {value!r}") from None


def _flags(env: Mapping[str, str], mode: str, at: _EnvAt, found: _Findings) -> dict[str, Any]:
    """The agave flags the image's entrypoint built from its environment, as chart `flags`.

    The chart itself passes ledger, accounts, snapshots, ports, bind address, identity, vote
    account and no-voting; this is the rest of what the entrypoint passed.
    """
    if mode == "test":
        return {}
    entrypoints = [env["VALIDATOR_ENTRYPOINT"]] if env.get("VALIDATOR_ENTRYPOINT") else []
    known = [env["KNOWN_VALIDATOR"]] if env.get("KNOWN_VALIDATOR") else []
    for key, found_list in (("VALIDATOR_ENTRYPOINT", entrypoints), ("KNOWN_VALIDATOR", known)):
        if not found_list:
            raise at.error(key, f"not set, and the {mode} node needs it")
    flags: dict[str, Any] = {
        "entrypoint": entrypoints + env.get("EXTRA_ENTRYPOINTS", "").split(),
        "known-validator": known + env.get("EXTRA_KNOWN_VALIDATORS", "").split(),
        "rpc-bind-address": env.get("RPC_BIND_ADDRESS", "127.0.0.1"),
        "no-os-network-limits-test": True,
        "wal-recovery-mode": "skip_any_corrupted_record",
        "limit-ledger-size": _whole(
            env.get("LIMIT_LEDGER_SIZE", "50000000"), at, "LIMIT_LEDGER_SIZE"
        ),
    }
    if env.get("NO_SNAPSHOTS") == "true":
        flags["no-snapshots"] = True
    else:
        flags["full-snapshot-interval-slots"] = _whole(
            env.get("SNAPSHOT_INTERVAL_SLOTS", "100000"), at, "SNAPSHOT_INTERVAL_SLOTS"
        )
        flags["maximum-full-snapshots-to-retain"] = _whole(
            env.get("MAXIMUM_SNAPSHOTS_TO_RETAIN", "1"), at, "MAXIMUM_SNAPSHOTS_TO_RETAIN"
        )
        if env.get("NO_INCREMENTAL_SNAPSHOTS") != "true":
            flags["maximum-incremental-snapshots-to-retain"] = 2
    indexes = [i.strip() for i in env.get("ACCOUNT_INDEXES", "").split(",") if i.strip()]
    if indexes:
        flags["account-index"] = indexes
    for key, flag in (
        ("EXPECTED_GENESIS_HASH", "expected-genesis-hash"),
        ("EXPECTED_SHRED_VERSION", "expected-shred-version"),
        ("BIND_ADDRESS", "bind-address"),
    ):
        if env.get(key):
            flags[flag] = _scalar(env[key])
    if env.get("JITO_ENABLE") == "true":
        for key, flag in JITO_FLAGS.items():
            if env.get(key) and (key != "JITO_RELAYER_URL" or mode == "validator"):
                flags[flag] = _scalar(env[key])
        found.add("changed", at("JITO_ENABLE"), "Jito flags are passed: the image must be a "
                  "Jito build, as before")  # fmt: skip
    if mode == "rpc":
        flags["log"] = "/data/log/validator.log"
        for flag in (
            "full-rpc-api", "enable-rpc-transaction-history",
            "rpc-pubsub-enable-block-subscription", "enable-extended-tx-metadata-storage",
            "no-wait-for-vote-to-start-leader",
        ):  # fmt: skip
            flags[flag] = True
        if env.get("PUBLIC_RPC_ADDRESS"):
            flags["public-rpc-address"] = env["PUBLIC_RPC_ADDRESS"]
        else:
            flags.update({"private-rpc": True, "allow-private-addr": True, "only-known-rpc": True})
    for name, value in parse_args(env.get("EXTRA_ARGS", ""), at("EXTRA_ARGS"), found).items():
        if name in ("rpc-port", "gossip-port", "dynamic-port-range", "ledger", "identity"):
            found.add(
                "unmapped", at("EXTRA_ARGS"), f"--{name} is set by the chart from ports, "
                "volumes and identity in agave.yaml; left out",
            )  # fmt: skip
            continue
        if name in flags:
            found.add("changed", at("EXTRA_ARGS"), f"--{name} was also set by the entrypoint; "
                      "the EXTRA_ARGS value is kept")  # fmt: skip
        flags[name] = value
    return flags


def _image(so: SoDeployment, service: Service, found: _Findings) -> tuple[str, str, bool]:
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
    so: SoDeployment, service: Service, rpc_port: int, found: _Findings
) -> dict[str, Any] | None:
    """http-proxy routes to the node's RPC and WebSocket ports as the chart's two Ingresses."""
    network = so.section("network")
    rpc: list[tuple[str, str]] = []
    ws: list[tuple[str, str]] = []
    key = "network.http-proxy"
    for i, entry in enumerate(_list(network.get("http-proxy"), so.at(so.spec_key(key)))):
        at = so.spec_key(f"{key}[{i}]")
        proxy = _mapping(entry, so.at(at), optional=False)
        host = str(proxy.get("host-name") or "").lower()
        for j, route in enumerate(_list(proxy.get("routes"), so.at(f"{at}.routes"))):
            r = _mapping(route, so.at(f"{at}.routes[{j}]"), optional=False)
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


def _passed_env(
    so: SoDeployment, env: Mapping[str, str], at: _EnvAt, mode: str, found: _Findings
) -> list[dict[str, str]]:
    """Sorts every variable the node saw: mapped, passed on in the chart's env, or reported."""
    readers: dict[str, list[str]] = {}
    for s in so.services:
        if s is not at.service:
            for key in _env_keys(s):
                readers.setdefault(key, []).append(s.name)
    downloads = env.get("SNAPSHOT_AUTO_DOWNLOAD", "true").lower() in ("true", "1", "yes")
    passed: list[dict[str, str]] = []
    for key in sorted(env):
        from_config = key in so.env
        if key in MAPPED_ENV or key == METRICS_ENV:
            continue
        if key in JITO_FLAGS and env.get("JITO_ENABLE") == "true":
            continue
        if key.startswith(AGAVE_ENV_PREFIXES):
            passed.append({"name": key, "value": env[key]})
        elif key in JITO_FLAGS or key in INERT_ENV:
            if from_config:
                why = INERT_ENV.get(key, "JITO_ENABLE is not true, so no Jito flag used it")
                found.add("ignored", at(key), why)
        elif key in ENTRYPOINT_ONLY_ENV:
            what = ENTRYPOINT_ONLY_ENV[key]
            inert = (mode == "test") != (what == _TEST_SCRIPT) or (
                what == _DOWNLOAD and not downloads
            )
            if not inert:
                found.add("unmapped", at(key), f"used by {what}; the chart starts agave "
                          "directly, so nothing reads it")  # fmt: skip
            elif from_config:
                found.add("ignored", at(key), f"used by {what}, which did not run")
        elif key in readers:
            if from_config:
                found.add("ignored", at(key), f"read by {', '.join(readers[key])}, not imported")
        else:
            found.add("unmapped", at(key), "no chart equivalent: laconic-so set it in the node's "
                      "container, the chart does not")  # fmt: skip
    return passed


def _scheduling(so: SoDeployment, service: Service) -> dict[str, Any]:
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
        _list(so.spec.get("node-affinities"), so.at("spec.yml: node-affinities"))
    ):
        item = _mapping(a, so.at(f"spec.yml: node-affinities[{i}]"), optional=False)
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
        _list(so.spec.get("node-tolerations"), so.at("spec.yml: node-tolerations"))
    ):
        item = _mapping(t, so.at(f"spec.yml: node-tolerations[{i}]"), optional=False)
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


@dataclass
class _Agave:
    values: dict[str, Any]
    secrets: list[dict[str, Any]]
    image: str | None  # a locally built image, which laconic-helm loads into the node
    mode: str
    metrics: str | None = None  # SOLANA_METRICS_CONFIG, written to METRICS_FILE


def _security(
    so: SoDeployment, service: Service, mode: str, gid: int | None, found: _Findings
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
    caps = _list(security.get("capabilities"), so.at("spec.yml: security.capabilities"))
    extra = [str(c) for c in caps if str(c) not in chart_caps]
    if extra and not values["privileged"]:
        found.add("unmapped", "spec.yml: security.capabilities", f"{', '.join(extra)}: the chart "
                  "adds IPC_LOCK and SYS_NICE only (NET_ADMIN and NET_RAW with xdp)")  # fmt: skip
    for key in sorted(
        set(security) - {"privileged", "capabilities", "unlimited-memlock", "runtime-class"}
    ):
        found.add("unmapped", f"spec.yml: security.{key}", "no chart equivalent")
    return values


def _chart_volumes(
    so: SoDeployment, service: Service, volumes: Mapping[str, _Volume], mode: str, found: _Findings
) -> dict[str, Any]:
    names = REAL_NODE_VOLUMES if mode != "test" else TEST_VOLUMES
    chart: dict[str, Any] = {}
    for target, volume in volumes.items():
        name = DATA_VOLUMES.get(target)
        if name is None or name not in names:
            found.add("unmapped", service.key("volumes"), f"{volume.name} at {target}: the agave "
                      f"chart has no volume there in {mode} mode")  # fmt: skip
        elif volume.node is None:
            claim = f"{so.app}-{volume.name}"
            chart[name] = {"type": "existingClaim", "existingClaim": claim}
            found.add(
                "changed", so.spec_key(f"volumes.{volume.name}"), f"no host path: the data is "
                f"in laconic-so's claim {claim}, which the node keeps using (same namespace)",
            )  # fmt: skip
        else:
            chart[name] = {"type": "hostPath", "hostPath": volume.node}
    # A folder without a volume lived in the container's own layer: emptyDir is the same.
    return {name: chart.get(name, {"type": "emptyDir"}) for name in names}


def map_agave(
    so: SoDeployment, service: Service, cluster: Mapping[str, Any], found: _Findings
) -> _Agave:
    """The agave chart's values for the agave compose service, plus its keypair Secrets."""
    env = service_env(service, so.env)
    at = _EnvAt(so, service)
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
    rpc = _whole(env.get("RPC_PORT", "8899"), at, "RPC_PORT")
    gossip = _whole(env.get("GOSSIP_PORT", "8001"), at, "GOSSIP_PORT")
    values["ports"] = {"rpc": rpc, "gossip": gossip}
    if mode != "test":
        taken = (rpc, rpc + 1, gossip)
        span = env.get("DYNAMIC_PORT_RANGE", "9000-10000")
        values["ports"]["dynamicPortRange"] = _port_range(span, at, taken, found)
    volumes = _volumes(so, service, cluster, found)

    def in_volumes(message: str) -> UserError:
        return UserError(f"{so.at(service.key('volumes'))}: {message}")

    secrets: list[dict[str, Any]] = []
    gid = None
    if mode != "test":
        path, gid = _keypair("identity", IDENTITY_IN_CONTAINER, volumes, in_volumes, found)
        secrets.append({"name": IDENTITY_SECRET, "files": {"identity.json": str(path)}})
        values["identity"] = {"existingSecret": IDENTITY_SECRET, "secretKey": "identity.json"}
    if mode == "validator":
        vote = env.get("VOTE_ACCOUNT_KEYPAIR", VOTE_IN_CONTAINER)
        path, _ = _keypair(
            "vote account", vote, volumes, lambda m: at.error("VOTE_ACCOUNT_KEYPAIR", m), found
        )
        secrets.append({"name": VOTE_SECRET, "files": {"vote-account.json": str(path)}})
        values["vote"] = {"existingSecret": VOTE_SECRET, "secretKey": "vote-account.json"}
    values.update(_security(so, service, mode, gid, found))
    values["volumes"] = _chart_volumes(so, service, volumes, mode, found)
    values["flags"] = _flags(env, mode, at, found)
    passed = _passed_env(so, env, at, mode, found)
    if passed:
        values["env"] = passed
    metrics = env.get(METRICS_ENV) or None
    if metrics:
        secrets.append({"name": METRICS_SECRET, "files": {"config": METRICS_FILE}})
        values["metrics"] = {"existingSecret": METRICS_SECRET, "secretKey": "config"}
        found.add("changed", at(METRICS_ENV), f"holds a password: it reaches the node from the "
                  f"Secret {METRICS_SECRET}, made from {METRICS_FILE} (beside the spec, 0600), "
                  "never from the values")  # fmt: skip
    values["resources"] = _resources(so, service, found)
    ingress = _ingress(so, service, rpc, found)
    if ingress is not None:
        values["ingress"] = ingress
        if values["flags"].get("rpc-bind-address") == "127.0.0.1":
            found.add("changed", at("RPC_BIND_ADDRESS"), "RPC listens on 127.0.0.1 only, so "
                      "Caddy cannot reach it (it could not under laconic-so either)")  # fmt: skip
    values.update(_scheduling(so, service))
    replicas = so.spec.get("replicas")
    if replicas not in (None, 1):
        found.add("changed", "spec.yml: replicas", f"{replicas}: an agave node runs as one pod")
    found.add(
        "changed", service.key("image"), "the image's entrypoint no longer runs: the chart starts "
        "agave-validator with the flags in agave.yaml, stops it with `agave-validator exit` "
        "(600 s grace; laconic-so gave 30 s) and lets agave fetch snapshots itself",
    )  # fmt: skip
    return _Agave(values, secrets, f"{repository}:{tag}" if local else None, mode, metrics)


# -- Caddy, the rest, and the takeover -------------------------------------------------------


def map_caddy(so: SoDeployment, found: _Findings) -> dict[str, Any]:
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


def _report_rest(so: SoDeployment, agave: Service, found: _Findings) -> None:
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
    used = set(_volume_mounts(agave, _Findings()))
    for section in ("volumes", "configmaps"):
        for name in sorted(set(so.section(section)) - used):
            found.add("ignored", so.spec_key(f"{section}.{name}"), "not a volume of the agave "
                      "node; left as it is")  # fmt: skip
    for name in so.extras:
        if name in LACONIC_ONLY_PARTS:
            found.add("unmapped", name, "laconic-so's start hooks, jobs, pod scripts and "
                      "ConfigMap sources are not carried over")  # fmt: skip


def _ports_of(so: SoDeployment, service: Service) -> list[tuple[int, str]]:
    """(container port, protocol) of each NodePort Service laconic-so made for the service."""
    listed = _mapping(so.section("network").get("ports"), so.at("spec.yml: network.ports"))
    entries = listed.get(service.name)
    if not isinstance(entries, list):
        entries = _list(service.doc.get("ports"), so.at(service.key("ports")))
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
    for name in sorted(_volume_mounts(agave, _Findings())):
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


def _namespace(so: SoDeployment, override: str | None, found: _Findings) -> str:
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
    if not _DNS_LABEL.match(namespace) or len(namespace) > 53:
        source = "--namespace" if override else so.at("spec.yml: namespace")
        raise UserError(f"{source}: {namespace!r} is not a lowercase name of up to 53 characters")
    if why:
        found.add(
            "assumed", "deployment.yml", f"app namespace {namespace}: {why}. Check with `kubectl "
            f"--context kind-{so.cluster_name} get deployments -A -l app={so.app}` and re-run "
            "with --namespace if it differs",
        )  # fmt: skip
    return namespace


# -- the output ------------------------------------------------------------------------------


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
    agave: _Agave,
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
    return {
        "cluster": cluster,
        "images": [agave.image] if agave.image else [],
        "releases": [caddy, release],
    }


def build_import(deployment_dir: Path, out: Path, *, namespace: str | None = None) -> Imported:
    """Reads and maps the deployment; returns the files to write and the report, writing nothing."""
    from laconic_helm.spec import data_dir

    so = read_deployment(deployment_dir)
    found = _Findings()
    agaves = [s for s in so.services if _is_agave(s)]
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
    source = f"laconic-so deployment {so.dir}"
    caddy_files = [f"caddy-ingress-{name}" for name in CADDY_OVERLAYS]
    commands = next_commands(out)
    files = {
        SPEC_FILE: _dump(
            _spec_doc(cluster, ns, mapped, caddy_files, takeover),
            f"laconic-helm deployment imported from {source}.\n"
            "The cluster is laconic-so's kind cluster as it was created; take it over with:\n"
            f"  {commands[0]}\n  {commands[1]}\n"
            f"What could not be carried over is listed in {REPORT_FILE}.",
            compact=True,
        ),
        AGAVE_VALUES: _dump(
            mapped.values,
            f"agave chart values imported from {source}:\n"
            f"service {agave.name} of {agave.file}, with the environment laconic-so gave it.",
        ),
        CADDY_VALUES: _dump(
            caddy,
            f"caddy-ingress values imported from {source},\n"
            f"applied after {' and '.join(caddy_files)}.",
        ),
    }
    if mapped.metrics:
        files[METRICS_FILE] = mapped.metrics
    for name, target in zip(CADDY_OVERLAYS, caddy_files, strict=True):
        shipped = (data_dir("values") / "caddy-ingress" / name).read_text()
        files[target] = f"# Copied by the import from laconic-helm's values/caddy-ingress/{name}.\n"
        files[target] += shipped
    items = sorted(found.items, key=lambda f: FINDING_ORDER.index(f.kind))
    report = {
        "source": str(so.dir),
        "cluster": so.cluster_name,
        "appNamespace": ns,
        "agaveService": agave.name,
        "mode": mapped.mode,
        "next": commands,
        "findings": [asdict(f) for f in items],
    }
    files[REPORT_FILE] = _dump(
        report,
        f"What `laconic-helm import laconic-so` made of {source}.\n"
        "findings: unmapped = had an effect and has no equivalent here (decide what to do);\n"
        "changed = carried over, but behaves differently; assumed = a guess to check;\n"
        "ignored = had no effect under laconic-so either.\n"
        "takeover: the laconic-so objects the first deploy adopts, removes or keeps.",
    ) + _dump({"takeover": takeover}, "", compact=True)
    return Imported(so.cluster_name, ns, agave.name, mapped.mode, files, items, takeover)


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
