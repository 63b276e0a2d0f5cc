"""Tests of cluster/access.py: reading the API server out of a kubeconfig (`unit`)."""

from __future__ import annotations

import pytest
import yaml

from laconic_helm.cluster import access


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://127.0.0.1:41234", 41234),
        ("https://[::1]:6443", 6443),
        ("https://example.org", 443),
        ("http://localhost/", 80),
        ("nonsense", None),
    ],
)
def test_server_port(url: str, port: int | None) -> None:
    assert access.server_port(url) == port


@pytest.mark.unit
def test_kubeconfig_server_follows_the_context() -> None:
    text = yaml.safe_dump(
        {
            "clusters": [
                {"name": "c1", "cluster": {"server": "https://127.0.0.1:1"}},
                {"name": "c2", "cluster": {"server": "https://127.0.0.1:2"}},
            ],
            "contexts": [{"name": "kind-lh", "context": {"cluster": "c2", "user": "u"}}],
        }
    )
    assert access.kubeconfig_server(text, "kind-lh") == "https://127.0.0.1:2"
    assert access.kubeconfig_server(text, "kind-other") is None
    assert access.kubeconfig_server(": not yaml [", "kind-lh") is None
