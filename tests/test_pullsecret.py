"""The imagePullSecret of an external registry (pullsecret.py): where its content comes from,
and that it never shows. The Secret made in the cluster, and a credentials Secret that is
missing, are covered on the stand-in API in test_registry.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from laconic_helm import pullsecret, registry


def _login(folder: Path, entries: dict[str, str]) -> None:
    auths = {
        key: {"auth": base64.b64encode(value.encode()).decode()} for key, value in entries.items()
    }
    (folder / "config.json").write_text(json.dumps({"auths": auths}))


@pytest.mark.unit
def test_pull_secret_comes_from_the_docker_login_and_stays_out_of_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(tmp_path, {"https://registry.example.com": "robot:s3cret-token"})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    external = registry.Where("registry.example.com/laconic")
    secret = pullsecret.desired(external, "agave")
    assert secret is not None
    assert (secret.namespace, secret.name, secret.type) == (
        "agave",
        pullsecret.NAME,
        "kubernetes.io/dockerconfigjson",
    )
    doc = json.loads(secret.data[".dockerconfigjson"])
    assert doc["auths"]["registry.example.com"]["username"] == "robot"
    assert doc["auths"]["registry.example.com"]["password"] == "s3cret-token"
    assert "s3cret" not in repr(secret)
    assert pullsecret.desired(registry.Where("other.example.com"), "agave") is None
    assert pullsecret.desired(registry.local_target("lh", 5001, "registry:2"), "agave") is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "found"),
    [
        ("registry.example.com:5000", True),
        ("http://registry.example.com:5000/v2/", True),
        ("registry.example.com", False),  # another port is another registry
        ("registry.example.com:5001", False),
    ],
)
def test_the_docker_login_is_matched_by_host_and_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, found: bool
) -> None:
    _login(tmp_path, {key: "robot:pw"})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert (pullsecret.docker_config_auth("registry.example.com:5000") is not None) is found


@pytest.mark.unit
def test_a_named_credentials_secret_is_not_replaced_by_the_docker_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `credentialsSecret` named, the Secret is built once the cluster's copy is read, never
    from this host's login in the meantime."""
    _login(tmp_path, {"registry.example.com": "robot:host-login"})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    named = registry.Where("registry.example.com", credentials=("ops", "pull"))
    assert pullsecret.desired(named, "agave") is None
    copied = pullsecret.dockerconfigjson("registry.example.com", base64.b64encode(b"ci:t").decode())
    secret = pullsecret.desired(named, "agave", copied)
    assert secret is not None and secret.data[".dockerconfigjson"] == copied


@pytest.mark.unit
def test_an_unreadable_docker_config_means_no_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{not json")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert pullsecret.docker_config_auth("registry.example.com") is None
