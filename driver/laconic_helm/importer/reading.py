"""Reads a laconic-so deployment dir (spec.yml, deployment.yml, kind-config.yml, config.env,
compose files) and type-checks it, naming the file and key of the first problem; maps nothing."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from laconic_helm.errors import UserError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        return absolute(str(root), self.dir) if root else None

    def spec_key(self, key: str) -> str:
        """A spec.yml key as the report names it."""
        return f"spec.yml: {key}"

    def at(self, where: str) -> str:
        """A report location (`file: key`) made absolute, for error messages."""
        return f"{self.dir}/{where}"

    def section(self, key: str) -> dict[str, Any]:
        """A mapping of spec.yml (empty when absent); raises naming the key when it is not one."""
        return as_mapping(self.spec.get(key), self.at(self.spec_key(key)))

    def deployment_name(self, pod: str) -> str:
        return f"{self.app}-deployment" if len(self.pods) == 1 else f"{self.app}-{pod}-deployment"

    def service_name(self, pod: str) -> str:
        return f"{self.app}-service" if len(self.pods) == 1 else f"{self.app}-{pod}-service"


def absolute(path: str, base: Path) -> str:
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


def as_mapping(value: Any, where: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def as_list(value: Any, where: str) -> list[Any]:
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
    spec = as_mapping(_load_yaml(spec_path, required=True), str(spec_path), optional=False)
    if spec.get("deploy-to") != "k8s-kind":
        raise UserError(
            f"{spec_path}: deploy-to: {spec.get('deploy-to')!r} is not supported; only "
            "k8s-kind deployments can be imported"
        )
    path = d / "deployment.yml"
    deployment = as_mapping(_load_yaml(path, required=True), str(path), optional=False)
    cluster_id = deployment.get("cluster-id")
    if not isinstance(cluster_id, str) or not DNS_LABEL.match(cluster_id):
        raise UserError(
            f"{path}: cluster-id: expected the kind cluster's lowercase name (a-z, 0-9, '-'), "
            f"got {cluster_id!r}"
        )
    deployment_id = deployment.get("deployment-id")
    if deployment_id is not None and not (
        isinstance(deployment_id, str) and DNS_LABEL.match(deployment_id)
    ):
        raise UserError(f"{path}: deployment-id: expected a lowercase name, got {deployment_id!r}")
    path = d / "kind-config.yml"
    kind_config = as_mapping(_load_yaml(path, required=True), str(path), optional=False)
    as_list(kind_config.get("nodes"), f"{path}: nodes")
    path = d / "config.env"
    if path.is_file():
        env = parse_env_file(path.read_text(), str(path))
    else:
        config = as_mapping(spec.get("config"), f"{spec_path}: config")
        env = {k: "" if v is None else str(v) for k, v in config.items()}
    compose_dir = d / "compose"
    files = sorted([*compose_dir.glob("*.yml"), *compose_dir.glob("*.yaml")])
    if not files:
        raise UserError(f"{compose_dir}: no compose files (*.yml); is this a deployment dir?")
    services: list[Service] = []
    for f in files:
        doc = as_mapping(_load_yaml(f, required=True), str(f), optional=False)
        for name, body in as_mapping(doc.get("services"), f"{f}: services").items():
            body_map = as_mapping(body, f"{f}: services.{name}")
            services.append(Service(name, _pod_name(f), str(f.relative_to(d)), body_map))
    path = d / "stack.yml"
    stack = as_mapping(_load_yaml(path, required=False), str(path))
    containers = tuple(str(c) for c in as_list(stack.get("containers"), f"{path}: containers"))
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
