"""The validator keypair stays in its file and its Secret, nowhere else.

After deploys with known test keypairs (the session deployment's first run with `--output json
-v`, then a key rotation with human output and `-v`, one with JSON output, and failing runs),
every form of each key (the file's text, its numbers, base64, hex and base58 of the key bytes)
is looked for in: the driver's output and error messages, the files in its state folder (none of
them readable by group or others), every revision of every Helm release record decoded (values,
manifest, NOTES, chart), and every object in the cluster but the identity Secret itself:
ConfigMaps, pods and workloads (their env), Services, Events, other Secrets. The identity Secret
is looked in too, where the key must be found: the search would see a leak.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator

import pytest

from tests.harness import deployment_under_test as dep
from tests.harness.client import Client
from tests.harness.session_deployment import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.apiserver]


def forms(keypair: bytes) -> dict[str, str]:
    """Every way the key could show up in text."""
    numbers = json.loads(keypair)
    raw = bytes(numbers)
    return {
        "file text": keypair.decode(),
        "compact list": json.dumps(numbers, separators=(",", ":")),
        "first numbers": ",".join(map(str, numbers[:12])),
        "first numbers, spaced": ", ".join(map(str, numbers[:12])),
        "file base64": base64.b64encode(keypair).decode(),
        "key base64": base64.b64encode(raw).decode(),
        "key hex": raw.hex(),
        "key base58": dep.base58(raw),
        "secret half base58": dep.base58(raw[:32]),
    }


def leaks(text: str, keys: dict[str, bytes]) -> list[str]:
    """The (key, form) pairs found in `text`."""
    return [
        f"{name}: {form}"
        for name, key in keys.items()
        for form, value in forms(key).items()
        if value in text
    ]


def _json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)


# Every kind a release, the driver, the controllers or the kubelet stand-in writes.
_LISTED = (
    "api/v1/configmaps", "api/v1/pods", "api/v1/services", "api/v1/serviceaccounts",
    "api/v1/events", "api/v1/persistentvolumeclaims", "api/v1/persistentvolumes",
    "api/v1/namespaces", "apis/apps/v1/deployments", "apis/apps/v1/replicasets",
    "apis/apps/v1/statefulsets", "apis/apps/v1/daemonsets", "apis/batch/v1/jobs",
    "apis/networking.k8s.io/v1/ingresses", "apis/networking.k8s.io/v1/ingressclasses",
    "apis/rbac.authorization.k8s.io/v1/roles", "apis/rbac.authorization.k8s.io/v1/rolebindings",
    "apis/rbac.authorization.k8s.io/v1/clusterroles",
)  # fmt: skip


def cluster_texts(client: Client) -> Iterator[tuple[str, str]]:
    """(where, text) for every object but the identity Secret; release records decoded."""
    for path in _LISTED:
        for item in client.get(f"/{path}")["items"]:
            meta = item["metadata"]
            yield f"{path} {meta.get('namespace', '')}/{meta['name']}", _json(item)
    for secret in client.get("/api/v1/secrets")["items"]:
        meta = secret["metadata"]
        where = f"Secret {meta.get('namespace')}/{meta['name']}"
        if meta["name"] == dep.IDENTITY_SECRET and meta.get("namespace") == dep.AGAVE_NAMESPACE:
            continue
        if secret.get("type") == "helm.sh/release.v1":
            record = dep.decode_release(secret)
            yield f"{where} (values, manifest, NOTES, chart)", _json(record)
            secret = {**secret, "data": {k: v for k, v in secret["data"].items() if k != "release"}}
        data = secret.get("data") or {}
        decoded = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        yield where, _json(secret) + _json(decoded)


def _rotate(deployed: Deployed, seed: str) -> bytes:
    """Writes a new known keypair into the spec's keypair file; returns it."""
    key = dep.keypair_bytes(seed)
    deployed.files.keypair.write_bytes(key)
    return key


@pytest.fixture(scope="module")
def runs(deployed: Deployed) -> dict[str, object]:
    """Deploys that handle keys, their outputs and the keys they handled."""
    keys = {"first": deployed.files.keypair.read_bytes()}
    outputs: dict[str, dep.Run] = {"first (json, -v)": deployed.first}

    keys["rotated (human)"] = _rotate(deployed, "secrets/human")
    human = deployed.deployment.run("-v", "deploy", json_output=False)
    assert human.code == 0, human.stderr
    outputs["rotated (human, -v)"] = human

    keys["rotated (json)"] = _rotate(deployed, "secrets/json")
    rotated = deployed.deployment.run("-v", "deploy")
    assert rotated.code == 0, rotated.stderr
    actions = [a for step in rotated.report["steps"] for a in step["data"].get("actions", [])]
    assert any("apply-secret" in a for a in actions)
    outputs["rotated (json, -v)"] = rotated

    # A failing run while the key is handled: the API refuses to change the Secret (it was
    # made immutable), so the error comes from the API with the request in hand.
    client = deployed.api.harness
    path = f"/api/v1/namespaces/{dep.AGAVE_NAMESPACE}/secrets/{dep.IDENTITY_SECRET}"
    client.patch(path, {"immutable": True})
    keys["refused"] = _rotate(deployed, "secrets/refused")
    for output in (False, True):
        failed = deployed.deployment.run("-v", "deploy", json_output=output, traceback=True)
        assert failed.code == 1, f"exit {failed.code}: {failed.stderr}"
        outputs[f"refused ({'json' if output else 'human'}, -v)"] = failed
    client.delete(path)
    # And one refused before anything happens (bad values), with the key read all the same.
    spec = deployed.deployment.spec
    bad = spec.with_name("bad.yaml")
    bad.write_text(spec.read_text().replace("size: 1Gi", "size: [1Gi]"))
    refused = dep.Deployment(bad, deployed.cluster, deployed.deployment.env).run(
        "-v", "deploy", traceback=True
    )
    assert refused.code == 2, refused.stderr
    outputs["bad input (json, -v)"] = refused

    keys["final"] = _rotate(deployed, "secrets/final")
    final = deployed.deployment.run("-v", "deploy")
    assert final.code == 0, final.stderr
    outputs["final (json, -v)"] = final
    return {"keys": keys, "outputs": outputs}


def test_driver_output_and_errors_hold_no_key(runs: dict) -> None:
    found = {
        name: leaks(run.stdout + run.stderr, runs["keys"]) for name, run in runs["outputs"].items()
    }
    assert all(not v for v in found.values()), found
    errors = [
        run.error or run.stderr.strip().splitlines()[-1].removeprefix("error: ")
        for run in runs["outputs"].values()
        if run.code
    ]
    assert len(errors) == 3 and all(errors), errors  # the errors were there to be looked at


def test_state_folder_is_private_and_holds_no_key(deployed: Deployed, runs: dict) -> None:
    files = list(deployed.state_dir.rglob("*"))
    assert any(p.name == "kubeconfig" for p in files)  # the folder is the one in use
    for path in [deployed.state_dir, *files]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            assert not leaks(text, runs["keys"]), path


def test_cluster_holds_the_key_only_in_its_secret(deployed: Deployed, runs: dict) -> None:
    client = deployed.api.harness
    found = {where: leaks(text, runs["keys"]) for where, text in cluster_texts(client)}
    assert {k: v for k, v in found.items() if v} == {}
    # The search sees a key where there is one: the identity Secret holds the current key.
    identity = client.get(f"/api/v1/namespaces/{dep.AGAVE_NAMESPACE}/secrets/{dep.IDENTITY_SECRET}")
    assert leaks(_json(identity), {"final": runs["keys"]["final"]})
    records = [t for w, t in cluster_texts(client) if "NOTES" in w]
    assert len(records) >= 4  # both releases, and the agave upgrades each rotation made
