"""What a release should be: its values layered as helm layers them, the digest of its inputs,
the Secrets it needs, and its render.

The digest covers the chart's files, the effective values and the caller's extras (image IDs,
Secret content hashes); it is stored in the revision's description and as a pod annotation,
so a release whose newest deployed revision carries it is up to date and nothing is written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError
from pyhelm3 import errors as helm_errors

from laconic_helm import paths, restarts, spec
from laconic_helm.errors import ReleaseError, SpecError
from laconic_helm.helm import release_error
from laconic_helm.images import containerd_name
from laconic_helm.kube import ObjectRef, SecretData

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import pyhelm3

    from laconic_helm.helm import Helm

DIGEST_ANNOTATION = "laconic-helm/digest"
DESCRIPTION_PREFIX = "laconic-helm digest="
POD_ANNOTATIONS = "podAnnotations"  # the values key the charts put on their workload pods

_DIGEST_SCHEME = b"laconic-helm digest v1"


def merge_values(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merges values layers the way helm merges `-f` files: maps merge key by key, anything
    else (lists included) is replaced by the later layer."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_values(out[key], value)
            else:
                out[key] = value
    return out


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    # YAML may hold dates and other non-JSON scalars; helm receives JSON, and so does the digest.
    return json.loads(json.dumps(values, default=str))


def effective_values(release: spec.Release) -> dict[str, Any]:
    """The values the operator asked for: the values files in order, then the inline values."""
    files = [spec.load_values_file(p) for p in release.values_files]
    return _plain(merge_values(*files, release.values))


def _ignore_rules(chart: Path) -> list[tuple[str, bool]]:
    """Reads `.helmignore` as (pattern, directories-only) pairs; negations are not honoured,
    which can only make the digest cover more files than helm packages."""
    path = chart / ".helmignore"
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        rules.append((line.rstrip("/").lstrip("/"), line.endswith("/")))
    return rules


def _ignored(rel: str, is_dir: bool, rules: list[tuple[str, bool]]) -> bool:
    for pattern, dirs_only in rules:
        if dirs_only and not is_dir:
            continue
        subject = rel if "/" in pattern else rel.rpartition("/")[2]
        if fnmatch.fnmatchcase(subject, pattern):
            return True
    return False


def chart_files(chart: Path) -> list[str]:
    """Returns the chart's file paths (relative, `/`-separated, sorted) that helm would load."""
    rules = _ignore_rules(chart)
    found: list[str] = []
    for folder, dirs, files in os.walk(chart):
        base = Path(folder).relative_to(chart).as_posix()
        prefix = "" if base == "." else f"{base}/"
        dirs[:] = [d for d in dirs if not _ignored(prefix + d, True, rules)]
        found += [prefix + f for f in files if not _ignored(prefix + f, False, rules)]
    return sorted(found)


def _frame(h: Any, tag: str, data: bytes) -> None:
    h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "big") + data)


def compute_digest(
    chart: Path, values: Mapping[str, Any], extras: Mapping[str, str] | None = None
) -> str:
    """Returns `sha256:<hex>` over the chart's files, the values and the extras.

    Any change to a template, a values layer, an image ID or a Secret changes the digest; the
    same inputs give the same digest on any machine.
    """
    h = hashlib.sha256(_DIGEST_SCHEME)
    for rel in chart_files(chart):
        _frame(h, "file", rel.encode())
        _frame(h, "content", (chart / rel).read_bytes())
    _frame(h, "values", json.dumps(values, sort_keys=True, separators=(",", ":")).encode())
    for key, value in sorted((extras or {}).items()):
        _frame(h, "extra", f"{key}={value}".encode())
    return f"sha256:{h.hexdigest()}"


def _chart_defaults(chart: Path) -> dict[str, Any]:
    """The chart's own values.yaml ({} when unreadable: helm's render reports that)."""
    try:
        defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return defaults if isinstance(defaults, dict) else {}


@dataclass(frozen=True)
class DesiredRelease:
    """One release as it should be: chart, final values (digest included) and its Secrets."""

    name: str
    namespace: str
    chart: Path
    values: dict[str, Any]
    digest: str
    secrets: tuple[SecretData, ...] = ()
    wait: bool = True
    timeout: int = 300
    restart_window: restarts.WindowPolicy | None = None  # what a restart of its node waits for
    pinned: dict[str, str] = field(default_factory=dict)  # registry mode: image -> reference
    # Renders made in this run, by (helm major, is_upgrade): preflight's check and the
    # observation before the upgrade need the same one, and a render costs helm seconds.
    renders: dict[tuple[int, bool], list[Any]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def target(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def step(self) -> str:
        return f"release/{self.name}"

    @property
    def description(self) -> str:
        return f"{DESCRIPTION_PREFIX}{self.digest}"


def _app_version(chart: Path) -> str:
    try:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    return str(meta.get("appVersion") or "") if isinstance(meta, dict) else ""


def pin_images(
    values: Mapping[str, Any], app_version: str, pinned: Mapping[str, str]
) -> tuple[dict[str, Any], set[str]]:
    """The values layer that points each image mapping (`repository` + `tag`, an empty tag
    meaning the chart's appVersion) naming one of `pinned`'s images at its new reference:
    `<registry>/<path>@<digest>` becomes `repository` + `digest`, `<registry>/<path>:<tag>`
    (not pushed yet) `repository` + `tag`. Returns the layer and the images it found."""
    by_name = {containerd_name(ref): ref for ref in pinned}
    found: set[str] = set()

    def walk(node: Mapping[str, Any]) -> dict[str, Any]:
        layer: dict[str, Any] = {}
        repo = node.get("repository")
        if isinstance(repo, str) and repo:
            tag = node.get("tag") or app_version
            ref = by_name.get(containerd_name(f"{repo}:{tag}" if tag else repo))
            if ref is not None:
                found.add(ref)
                new, at, digest = pinned[ref].partition("@")
                if at:
                    layer.update(repository=new, digest=digest)
                else:
                    layer.update(repository=new.rpartition(":")[0], tag=new.rpartition(":")[2])
        for key, value in node.items():
            if isinstance(value, dict) and (sub := walk(value)):
                layer[key] = sub
        return layer

    return walk(values), found


def desired_release(
    release: spec.Release,
    *,
    extras: Mapping[str, str] | None = None,
    pinned: Mapping[str, str] | None = None,
    pull_secret: SecretData | None = None,
) -> DesiredRelease:
    """Reads the chart, values files and secret files of a spec release into its desired state.

    `extras` are further inputs the workloads depend on (e.g. `image/<ref>` -> image ID), so a
    rebuilt image under the same tag changes the digest and rolls the pods. `pinned` maps the
    release's images to the references it runs them by (registry mode); `pull_secret` is the
    registry's credentials, made in the namespace and named in `imagePullSecrets`.
    """
    chart = Path(release.chart)
    # The pull Secret is applied like the others, but a new credential restarts no pod.
    secrets = [pull_secret] if pull_secret is not None else []
    parts = dict(extras or {})
    for s in release.secrets:
        data = {}
        for key, path in s.files.items():
            try:
                data[key] = path.read_bytes()
            except OSError as exc:
                raise SpecError(f"{path}: cannot read secret file ({exc.strerror})") from None
            parts[f"secret/{s.name}/{key}"] = hashlib.sha256(data[key]).hexdigest()
        secrets.append(SecretData(release.namespace, s.name, data))
    values = effective_values(release)
    defaults = _chart_defaults(chart)
    if pinned:
        wanted = {ref: pinned[ref] for ref in release.images if ref in pinned}
        layer, found = pin_images(merge_values(defaults, values), _app_version(chart), wanted)
        for ref in release.images:
            if ref in wanted and ref not in found:
                raise SpecError(
                    f"release {release.name}: no image `repository`/`tag` in its values names "
                    f"{ref}, so its pods cannot run it from the registry",
                    hint="set the chart's image.repository and image.tag to it",
                )
        values = merge_values(values, layer)
    if pull_secret is not None:
        listed = list(values.get("imagePullSecrets") or [])
        if {"name": pull_secret.name} not in listed:
            listed.append({"name": pull_secret.name})
        values = {**values, "imagePullSecrets": listed}
    digest = compute_digest(chart, values, parts)
    if POD_ANNOTATIONS in defaults:
        values = merge_values(values, {POD_ANNOTATIONS: {DIGEST_ANNOTATION: digest}})
    return DesiredRelease(
        name=release.name,
        namespace=release.namespace,
        chart=chart,
        values=values,
        digest=digest,
        secrets=tuple(secrets),
        wait=release.wait,
        timeout=release.timeout,
        restart_window=restarts.policy_of(merge_values(defaults, values)),
        pinned=dict(pinned or {}),
    )


def short_digest(digest: str) -> str:
    """The digest as lines and file names show it."""
    return digest.removeprefix("sha256:")[:12]


# -- rendering ---------------------------------------------------------------------------------


async def render(helm: Helm, desired: DesiredRelease, upgrade: bool) -> list[Any]:
    key = (helm.major, upgrade)
    if key not in desired.renders:
        desired.renders[key] = await _render_now(helm, desired, upgrade)
    return desired.renders[key]


async def _render_now(helm: Helm, desired: DesiredRelease, upgrade: bool) -> list[Any]:
    chart = await load_chart(helm, desired)
    try:
        docs = await helm.client.template_resources(
            chart,
            desired.name,
            desired.values,
            namespace=desired.namespace,
            no_hooks=True,
            is_upgrade=upgrade,
        )
        objects = list(docs)
    except helm_errors.Error as exc:
        raise release_error(desired.name, "template", exc) from None
    except yaml.YAMLError:
        raise ReleaseError(desired.name, "the chart renders invalid YAML") from None
    return objects


async def check_renders(helm: Helm, desired: DesiredRelease) -> None:
    """Raises SpecError unless the chart renders with the release's values.

    The chart's values schema and its own checks (`required`, `fail`) then refuse a values
    mistake before anything is touched: bad input (exit 2), not an upgrade that fails after the
    images were loaded and the releases before it were changed.
    """
    # The digest covers chart and values: once they rendered, they render again (a private
    # marker, so a re-run skips the seconds helm takes; losing it only costs a render).
    marker = paths.state_dir() / "rendered" / f"{short_digest(desired.digest)}-helm{helm.major}"
    if marker.exists():
        return
    try:
        await render(helm, desired, upgrade=False)
    except ReleaseError as exc:
        raise SpecError(exc.message, hint="fix the release's values or valuesFiles") from None
    paths.write_private(marker, b"")


def refs(objects: Iterable[Any]) -> list[ObjectRef]:
    """The objects of a render, by name (unscoped: a namespaced one may leave its namespace out)."""
    found = []
    for obj in objects:
        if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
            continue
        meta = obj.get("metadata") or {}
        if meta.get("name"):
            found.append(
                ObjectRef(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
            )
    return found


def manifest_refs(manifest: str) -> list[ObjectRef]:
    try:
        return refs(yaml.safe_load_all(manifest))
    except yaml.YAMLError:
        return []  # unreadable: treat every existing object as not yet applied


async def load_chart(helm: Helm, desired: DesiredRelease) -> pyhelm3.Chart:
    try:
        return await helm.client.get_chart(desired.chart)
    except helm_errors.Error as exc:
        raise release_error(desired.name, "show chart", exc) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReleaseError(
            desired.name, f"{desired.chart}/Chart.yaml: {where}: {first['msg']}"
        ) from None
