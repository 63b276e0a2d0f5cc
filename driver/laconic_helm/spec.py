"""The deployment model: what the operator wants, validated before anything is touched.

A spec is YAML (`deployment.yaml`); with no file the built-in default deploys Caddy and the agave
`test` mode on a kind cluster named `laconic-local`. Relative paths in a spec are relative to the
spec's own folder. Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from laconic_helm.errors import SpecError, UserError

DEFAULT_SPEC_NAME = "deployment.yaml"
DEFAULT_CLUSTER = "laconic-local"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_DNS_LABEL, max_length=53)]
Port = Annotated[int, Field(ge=1, le=65535)]
ObjectName = Annotated[
    str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PortMapping(_Model):
    """A kind extraPortMapping: a node port published on the host."""

    container_port: Port = Field(alias="containerPort", description="Port inside the node.")
    host_port: Port = Field(alias="hostPort", description="Port on the host.")
    protocol: Literal["TCP", "UDP", "SCTP"] = Field("TCP", description="IP protocol.")
    listen_address: str = Field(
        "0.0.0.0", alias="listenAddress", description="Host address the port binds to."
    )


class Mount(_Model):
    """A kind extraMount: a host folder visible inside the node."""

    host_path: Path = Field(alias="hostPath", description="Folder on the host (must exist).")
    container_path: str = Field(alias="containerPath", description="Path inside the node.")
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")
    propagation: Literal["None", "HostToContainer", "Bidirectional"] = Field(
        "None", description="Mount propagation."
    )


KUBEADM_PATCH_KINDS = (
    "InitConfiguration",
    "ClusterConfiguration",
    "JoinConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
)


class KindPatches(_Model):
    """Host-specific additions to the kind config, applied after laconic-helm's own: a cgroup v1
    host's kubelet setting, a registry mirror, an API server flag. Fixed at cluster creation."""

    kubeadm: tuple[dict[str, Any], ...] = Field(
        (),
        description="kubeadm config patches (kind's kubeadmConfigPatches), each a mapping whose "
        f"`kind` is one of {', '.join(KUBEADM_PATCH_KINDS)}.",
    )
    containerd: tuple[str, ...] = Field(
        (), description="containerd config TOML snippets (kind's containerdConfigPatches)."
    )

    @field_validator("kubeadm")
    @classmethod
    def _check_kubeadm(cls, patches: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for i, patch in enumerate(patches):
            if patch.get("kind") not in KUBEADM_PATCH_KINDS:
                raise ValueError(
                    f"[{i}]: `kind` is {patch.get('kind')!r}, expected one of "
                    f"{', '.join(KUBEADM_PATCH_KINDS)}"
                )
        return patches

    @field_validator("containerd")
    @classmethod
    def _check_containerd(cls, patches: tuple[str, ...]) -> tuple[str, ...]:
        for i, patch in enumerate(patches):
            try:
                tomllib.loads(patch)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"[{i}]: not valid TOML ({exc})") from None
        return patches

    def __bool__(self) -> bool:
        return bool(self.kubeadm or self.containerd)


class ContainerLogs(_Model):
    """The kubelet's rotation of container logs: agave writes gigabytes a day to stdout, and
    the kubelet's own default (10 MiB x 5) keeps only minutes of it."""

    max_size: str = Field(
        "200Mi",
        alias="maxSize",
        pattern=r"^[1-9][0-9]*(Ki|Mi|Gi)$",
        description="Size at which a container's log file is rotated (Ki, Mi or Gi).",
    )
    max_files: int = Field(
        5, alias="maxFiles", ge=2, le=100, description="Log files kept per container."
    )


def _repeats(keys: Iterable[Hashable]) -> Iterator[tuple[int, int]]:
    """(index, index of its first occurrence) for each key met before: the spec's duplicates."""
    seen: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            yield i, seen[key]
        seen.setdefault(key, i)


# host[:port] then optional /path segments, lowercase as registries store repositories
_REGISTRY_ADDRESS = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"


class LocalRegistry(_Model):
    """The registry container on this host that registry mode keeps running for a kind
    cluster (named `<cluster>-registry`, its blobs in a docker volume of the same name)."""

    port: Port = Field(5001, description="Host port on 127.0.0.1 the registry is pushed to.")
    image: str = Field(
        "registry:2",
        min_length=1,
        description="Image of the registry container: the CNCF distribution registry (serves "
        "on port 5000, stores under /var/lib/registry).",
    )


class CredentialsSecret(_Model):
    """A `kubernetes.io/dockerconfigjson` Secret already in the cluster whose credentials the
    nodes pull with; it is copied into each release namespace that runs the images."""

    namespace: Name = Field(description="Namespace of the Secret.")
    name: ObjectName = Field(max_length=253, description="Name of the Secret.")


class ExternalRegistry(_Model):
    """A registry the nodes can reach and this host can push to (e.g. for provider existing).

    Pushes use this host's Docker login. The nodes pull with the credentials of
    `credentialsSecret`, else with those this host's Docker config holds for the registry, if
    any: each release namespace that runs the images gets them as an imagePullSecret."""

    address: str = Field(
        pattern=_REGISTRY_ADDRESS,
        description="host[:port][/path] the images are pushed under, e.g. "
        "registry.example.com/laconic.",
    )
    credentials_secret: CredentialsSecret | None = Field(
        None,
        alias="credentialsSecret",
        description="The nodes' pull credentials: a dockerconfigjson Secret in the cluster. "
        "Default: this host's Docker login for the registry (none: anonymous pulls).",
    )

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]


class ImageDelivery(_Model):
    """How the spec's local images reach the cluster's nodes."""

    mode: Literal["stream", "registry"] | None = Field(
        None,
        description="stream: sent into each kind node's containerd; registry: pushed to a "
        "registry the nodes pull from, the releases' image references pinned to the pushed "
        "digests. Default: registry (on kind the local one; a kind cluster whose nodes read "
        "no registry host config, made before registry mode, is streamed into).",
    )
    local: LocalRegistry = Field(
        default_factory=LocalRegistry, description="The local registry (kind, registry mode)."
    )
    external: ExternalRegistry | None = Field(
        None, description="Push to this registry instead of a local one (required on existing)."
    )


class Cluster(_Model):
    """Where the releases go: a kind cluster this tool manages, or any existing cluster."""

    name: Name = Field(DEFAULT_CLUSTER, description="kind cluster name (never 'the first one').")
    provider: Literal["kind", "existing"] = Field("kind", description="kind or existing.")
    context: str | None = Field(
        None, description="kube context; default kind-<name> for kind, required for existing."
    )
    node_image: str | None = Field(None, alias="nodeImage", description="kind node image.")
    ports: tuple[PortMapping, ...] = Field((), description="Host port mappings (kind only).")
    mounts: tuple[Mount, ...] = Field((), description="Host folders mounted into the node.")
    node_labels: dict[str, str] = Field(
        default_factory=lambda: {"ingress-ready": "true"},
        alias="nodeLabels",
        description="Labels on the control-plane node.",
    )
    high_memlock: bool = Field(
        False,
        alias="highMemlock",
        description="Add a containerd runtime with unlimited memlock and a RuntimeClass for it.",
    )
    kind_patches: KindPatches = Field(
        default_factory=KindPatches,
        alias="kindPatches",
        description="kind config patches for this host (kubeadm, containerd), after the driver's.",
    )
    container_logs: ContainerLogs = Field(
        default_factory=ContainerLogs,
        alias="containerLogs",
        description="Container log rotation of the kind node's kubelet, set when the cluster "
        "is created (kind only).",
    )

    @property
    def kube_context(self) -> str:
        return self.context or f"kind-{self.name}"

    @model_validator(mode="after")
    def _check_provider(self) -> Cluster:
        if self.provider == "existing" and not self.context:
            raise ValueError("provider 'existing' needs 'context' (the kube context to use)")
        for i, first in _repeats((p.host_port, p.protocol) for p in self.ports):
            p = self.ports[i]
            raise ValueError(
                f"ports[{i}]: host port {p.host_port}/{p.protocol} already used by ports[{first}]"
            )
        return self


class SecretSpec(_Model):
    """A Secret the driver creates from files, so key material never enters release values."""

    name: Name = Field(description="Secret name in the release namespace.")
    files: dict[str, Path] = Field(description="Secret key -> file holding its bytes.")

    @field_validator("files")
    @classmethod
    def _not_empty(cls, v: dict[str, Path]) -> dict[str, Path]:
        if not v:
            raise ValueError("needs at least one file")
        return v


class Verify(_Model):
    """Where a user reaches the node's RPC through the ingress (checked after the deploy)."""

    url: str = Field(
        pattern=r"^https?://", description="URL of the ingress, e.g. http://127.0.0.1/."
    )
    host: str | None = Field(None, description="Host header: the RPC route's host name.")


# Kinds a `retire` section may remove, with the API version they are served under. Kinds that
# hold or guard data (PersistentVolume, PersistentVolumeClaim, Namespace, Secret, ConfigMap) are
# never on this list: a takeover removes what runs and routes, never what is stored.
RETIRABLE = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "Ingress": "networking.k8s.io/v1",
    "CronJob": "batch/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ServiceAccount": "v1",
}
_DATA_KINDS = frozenset(
    {"PersistentVolume", "PersistentVolumeClaim", "Namespace", "Secret", "ConfigMap"}
)
_LABEL_KEY = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
_LABEL_KEY += r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SELECTOR = rf"{_LABEL_KEY}={_LABEL_VALUE}(,{_LABEL_KEY}={_LABEL_VALUE})*"


class RetireObject(_Model):
    """One object of a previous installer that the release replaces."""

    api_version: str | None = Field(
        None, alias="apiVersion", description="API version; default: the kind's usual one."
    )
    kind: str = Field(description=f"One of {', '.join(RETIRABLE)}.")
    name: ObjectName = Field(max_length=253, description="Object name.")
    namespace: Name | None = Field(None, description="Namespace; default: the release's.")

    @field_validator("kind")
    @classmethod
    def _retirable(cls, v: str) -> str:
        if v in _DATA_KINDS:
            raise ValueError(f"{v} holds or guards data and is never retired")
        if v not in RETIRABLE:
            raise ValueError(f"{v!r} cannot be retired; expected one of {', '.join(RETIRABLE)}")
        return v

    @model_validator(mode="after")
    def _known_version(self) -> RetireObject:
        want = RETIRABLE[self.kind]
        if self.api_version not in (None, want):
            raise ValueError(f"apiVersion of kind {self.kind} is {want}, not {self.api_version!r}")
        return self

    @property
    def version(self) -> str:
        return self.api_version or RETIRABLE[self.kind]


class Retire(_Model):
    """Objects of a previous installer (e.g. laconic-so) removed once the release is deployed.

    Only objects that carry every label of `selector` are removed, so another object that
    happens to have the same name stays. An absent object counts as removed.
    """

    selector: str = Field(
        description="Labels (key=value, comma-separated) an object must carry to be removed."
    )
    grace_period_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        alias="gracePeriodSeconds",
        description="Seconds the pods of a retired Deployment get to stop; default: their own.",
    )
    objects: tuple[RetireObject, ...] = Field(description="The objects.")

    @property
    def labels(self) -> dict[str, str]:
        return dict(term.split("=", 1) for term in self.selector.split(","))

    @field_validator("selector")
    @classmethod
    def _equality_terms(cls, v: str) -> str:
        if not re.fullmatch(_SELECTOR, v):
            raise ValueError(f"expected labels as key=value[,key=value...] (got {v!r})")
        return v

    @field_validator("objects")
    @classmethod
    def _unique(cls, v: tuple[RetireObject, ...]) -> tuple[RetireObject, ...]:
        if not v:
            raise ValueError("needs at least one object")
        seen: dict[tuple[str, str, str | None], int] = {}
        for i, o in enumerate(v):
            key = (o.kind, o.name, o.namespace)
            if key in seen:
                raise ValueError(f"[{i}] {o.kind} {o.name} duplicates [{seen[key]}]")
            seen[key] = i
        return v


class Release(_Model):
    """One Helm release, applied with `helm upgrade --install`."""

    name: Name = Field(description="Release name.")
    chart: str = Field(description="Chart folder (relative to the spec) or builtin:<chart>.")
    namespace: Name = Field(description="Release namespace (created when absent).")
    values_files: tuple[Path, ...] = Field(
        (),
        alias="valuesFiles",
        description="Values files, applied in order: paths relative to the spec, or "
        "builtin:<chart>/<file> for an overlay shipped in values/.",
    )
    values: dict[str, Any] = Field(default_factory=dict, description="Inline values, applied last.")
    secrets: tuple[SecretSpec, ...] = Field((), description="Secrets created before the release.")
    images: tuple[str, ...] = Field(
        (), description="Images of the spec this release runs; a rebuilt one rolls its pods."
    )
    verify: Verify | None = Field(None, description="JSON-RPC check through the ingress.")
    wait: bool = Field(True, description="Wait for workloads to be ready.")
    timeout: int = Field(300, ge=1, description="Seconds helm may wait.")
    retire: Retire | None = Field(
        None, description="A previous installer's objects to remove once this release is deployed."
    )


class Spec(_Model):
    """A whole deployment: the cluster, the images to load and the releases in order."""

    cluster: Cluster = Field(default_factory=Cluster, description="The cluster.")
    images: tuple[str, ...] = Field((), description="Local docker images to load into the nodes.")
    image_delivery: ImageDelivery = Field(
        default_factory=ImageDelivery,
        alias="imageDelivery",
        description="How the images reach the nodes: stream or registry.",
    )
    releases: tuple[Release, ...] = Field((), description="Releases, applied in this order.")
    source: Path | None = Field(None, exclude=True, description="File the spec came from.")

    @model_validator(mode="after")
    def _unique_releases(self) -> Spec:
        for i, first in _repeats((r.namespace, r.name) for r in self.releases):
            r = self.releases[i]
            raise ValueError(
                f"releases[{i}]: release {r.name!r} in namespace {r.namespace!r} "
                f"duplicates releases[{first}]"
            )
        for i, r in enumerate(self.releases):
            for j, image in enumerate(r.images):
                if image not in self.images:
                    raise ValueError(
                        f"releases[{i}].images[{j}]: {image!r} is not in the top-level images"
                    )
        delivery = self.image_delivery
        if self.cluster.provider == "existing":
            if delivery.mode == "stream":
                raise ValueError(
                    "imageDelivery.mode: stream needs kind nodes; provider 'existing' takes "
                    "images through a registry (imageDelivery.external)"
                )
            if self.images and delivery.external is None:
                raise ValueError(
                    "imageDelivery.external: provider 'existing' needs a registry to push the "
                    "images to (address: host[:port][/path])"
                )
        return self

    @property
    def delivery_mode(self) -> Literal["stream", "registry"]:
        """Registry unless the spec says stream: a rebuilt layer costs less through a registry
        (benchmarks/README.md, "Stream and registry modes")."""
        return self.image_delivery.mode or "registry"


def data_dir(kind: Literal["charts", "values", "examples"]) -> Path:
    """Returns a folder shipped with the package (or the repo's, editable): charts/, values/, or
    examples/ (its deployment.yaml alone is shipped)."""
    packaged = Path(__file__).parent / "_data" / kind
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / kind


def write_example(out: Path | None = None) -> Path:
    """Writes examples/deployment.yaml (the built-in default, every field commented) to `out`
    (default ./deployment.yaml, the spec commands read), to edit; never over an existing file,
    which may be an operator's edited spec. Returns the path written."""
    out = out or Path(DEFAULT_SPEC_NAME)
    text = (data_dir("examples") / DEFAULT_SPEC_NAME).read_text()
    try:
        with out.open("x") as f:
            f.write(text)
    except FileExistsError:
        raise UserError(f"{out}: already exists; edit it or pass another --out") from None
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror})") from None
    return out


def _error_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    kind, got = first["type"], first.get("input")
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "string_pattern_mismatch":
        msg = f"expected a lowercase name of a-z, 0-9 and '-' (got {got!r})"
    elif kind.endswith(("_type", "_parsing")):
        msg = f"{first['msg'][0].lower()}{first['msg'][1:]} (got {got!r})"
    else:
        msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{_error_path(first['loc'])}: " if first["loc"] else ""
    return f"{source}: {where}{msg}{more}"


def parse_spec(data: Any, *, source: str, base: Path, secret_files: bool = True) -> Spec:
    """Validates a spec document and resolves its paths against `base`; raises SpecError."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_one_line(source, exc)) from None
    return _resolve(spec, source=source, base=base, secret_files=secret_files)


def _builtin(ref: str, kind: Literal["charts", "values"]) -> Path | None:
    """The shipped chart or overlay that `builtin:<path>` names; None for any other reference."""
    return data_dir(kind) / ref.removeprefix("builtin:") if ref.startswith("builtin:") else None


def _resolve_chart(chart: str, base: Path) -> str:
    return str(_builtin(chart, "charts") or (base / chart).resolve())


def _resolve(spec: Spec, *, source: str, base: Path, secret_files: bool) -> Spec:
    """Paths made absolute and checked; `secret_files` False leaves the Secrets' files
    unchecked (an import off the node's host writes a spec naming files kept there)."""

    def path(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def must_exist(p: Path, key: str, what: str) -> None:
        if not p.exists():
            raise SpecError(f"{source}: {key}: {what} {p} does not exist")

    releases = []
    for i, r in enumerate(spec.releases):
        chart = _resolve_chart(r.chart, base)
        if not (Path(chart) / "Chart.yaml").is_file():
            raise SpecError(f"{source}: releases[{i}].chart: no chart (Chart.yaml) at {chart}")
        values_files = tuple(_builtin(str(p), "values") or path(p) for p in r.values_files)
        for j, p in enumerate(values_files):
            must_exist(p, f"releases[{i}].valuesFiles[{j}]", "values file")
            load_values_file(p, f"releases[{i}].valuesFiles[{j}]")
        secrets = []
        for j, s in enumerate(r.secrets):
            files = {k: path(p) for k, p in s.files.items()}
            for k, p in files.items():
                key = f"releases[{i}].secrets[{j}].files.{k}"
                if not secret_files and not p.exists():
                    continue
                must_exist(p, key, "secret file")
                if not p.is_file():
                    raise SpecError(f"{source}: {key}: {p} is not a file")
            secrets.append(s.model_copy(update={"files": files}))
        releases.append(
            r.model_copy(
                update={"chart": chart, "values_files": values_files, "secrets": tuple(secrets)}
            )
        )
    mounts = tuple(
        m.model_copy(update={"host_path": path(m.host_path)}) for m in spec.cluster.mounts
    )
    cluster = spec.cluster.model_copy(update={"mounts": mounts})
    return spec.model_copy(
        update={"cluster": cluster, "releases": tuple(releases), "source": Path(source)}
    )


def load_values_file(p: Path, key: str | None = None) -> dict[str, Any]:
    """Reads a values file; raises SpecError naming the file (and the spec key that names it)."""
    named_by = f"; named by {key}" if key else ""
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: cannot read values file ({exc.strerror}){named_by}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{p}:{where}: not valid YAML{named_by}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping of values, got {type(data).__name__}")
    return data


def load_spec(path: Path | None, *, secret_files: bool = True) -> Spec:
    """Loads the spec at `path`, or the built-in default when `path` is None; `secret_files`
    False accepts Secret files that are not on this host (yet)."""
    if path is None:
        return default_spec()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, expected a spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: {where}not valid YAML ({problem})") from None
    return parse_spec(data, source=str(path), base=path.parent.resolve(), secret_files=secret_files)


BUILTIN_SOURCE = "(built-in default)"  # the `source` of the spec used when no file is given


def default_spec() -> Spec:
    """The built-in deployment: Caddy plus the agave test node on kind cluster laconic-local."""
    values = data_dir("values")
    doc = {
        "cluster": {
            "name": DEFAULT_CLUSTER,
            "ports": [
                {"containerPort": 80, "hostPort": 80},
                {"containerPort": 443, "hostPort": 443},
            ],
        },
        "releases": [
            {
                "name": "caddy-ingress",
                "chart": "builtin:caddy-ingress",
                "namespace": "caddy-system",
                "valuesFiles": [str(values / "caddy-ingress" / "kind.yaml")],
            },
            {
                "name": "agave",
                "chart": "builtin:agave",
                "namespace": "agave",
                "valuesFiles": [str(values / "agave" / "kind-test.yaml")],
                "verify": {"url": "http://127.0.0.1/", "host": "rpc.agave.localhost"},
            },
        ],
    }
    return parse_spec(doc, source=BUILTIN_SOURCE, base=Path.cwd())
