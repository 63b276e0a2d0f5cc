"""The imagePullSecret nodes pull an external registry's images with.

Its content is the spec's credentials Secret (copied into each release namespace), else this
host's `docker login` for the registry, else there is none: the local registry, and an external
one that allows anonymous pulls, need none. It is never logged or shown.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from laconic_helm.errors import UserError

if TYPE_CHECKING:
    from laconic_helm.kube import Kube, SecretData
    from laconic_helm.registry import Where

NAME = "laconic-helm-registry"  # made in each release namespace
DOCKER_CONFIG_TYPE = "kubernetes.io/dockerconfigjson"
DOCKER_CONFIG_KEY = ".dockerconfigjson"


def docker_config_auth(host: str) -> str | None:
    """The `auth` this host's Docker config keeps for `host` (`docker login`), if any."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key, entry in (config.get("auths") or {}).items():
        if key.removeprefix("https://").removeprefix("http://").split("/", 1)[0] == host:
            return str(entry.get("auth") or "") or None
    return None


def desired(target: Where, namespace: str, config: bytes | None = None) -> SecretData | None:
    """The imagePullSecret of an external registry: `config` (the credentials Secret's
    `.dockerconfigjson`), else this host's Docker login for it; None when there is neither (the
    local registry and anonymous pulls need none)."""
    from laconic_helm.kube import SecretData  # the Kubernetes client: only where it is used

    if target.local:
        return None
    if config is None:
        if target.credentials is not None or (auth := docker_config_auth(target.host)) is None:
            return None  # the named Secret is read once the cluster can be reached
        config = dockerconfigjson(target.host, auth)
    return SecretData(namespace, NAME, {DOCKER_CONFIG_KEY: config}, DOCKER_CONFIG_TYPE)


async def read_credentials(kube: Kube, target: Where) -> bytes | None:
    """The `.dockerconfigjson` of the spec's credentials Secret; UserError when it is missing
    or of another type."""
    if target.credentials is None:
        return None
    namespace, name = target.credentials
    key = "imageDelivery.external.credentialsSecret"
    found = await kube.get_secret(namespace, name)
    if found is None:
        raise UserError(f"{key}: Secret {namespace}/{name} does not exist")
    data = (found.get("data") or {}).get(DOCKER_CONFIG_KEY)
    if found.get("type") != DOCKER_CONFIG_TYPE or not data:
        raise UserError(
            f"{key}: Secret {namespace}/{name} is not of type {DOCKER_CONFIG_TYPE} "
            f"with a {DOCKER_CONFIG_KEY} key"
        )
    return base64.b64decode(data)


def dockerconfigjson(host: str, auth: str) -> bytes:
    """The `.dockerconfigjson` of a pull Secret holding one registry's credentials."""
    user, _, password = base64.b64decode(auth).decode(errors="replace").partition(":")
    entry = {"username": user, "password": password, "auth": auth}
    return json.dumps({"auths": {host: entry}}, sort_keys=True).encode()
