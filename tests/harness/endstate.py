"""What a converged deployment is, as the fault-injection suites check it: the objects each
release's manifest names and the digest each release must be deployed at."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from laconic_helm import images as image_loader
from laconic_helm import spec as spec_model
from laconic_helm.desired import DESCRIPTION_PREFIX, desired_release
from tests.harness.client import CLUSTER_KINDS, PLURALS
from tests.harness.deployment_under_test import (
    ObjectKey,
    decode_release,
    release_secrets,
    release_statuses,
)

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI


def manifest_keys(record: dict[str, Any]) -> set[ObjectKey]:
    keys = set()
    for doc in yaml.safe_load_all(record.get("manifest") or ""):
        if not doc:
            continue
        kind, meta = doc["kind"], doc["metadata"]
        assert kind in PLURALS, f"the check does not know kind {kind}"
        ns = "" if kind in CLUSTER_KINDS else meta.get("namespace") or record["namespace"]
        keys.add((PLURALS[kind], ns, meta["name"]))
    return keys


def expected_digests(spec_path: Path) -> dict[str, str]:
    """The digest each release must be deployed at: the driver's own function over the spec's
    chart, values, Secret files and local image IDs (inputs an uninterrupted run also reads)."""
    spec = spec_model.load_spec(spec_path)
    ids = {i.ref: i.id for i in asyncio.run(image_loader.check_images(spec.images))}
    return {
        r.name: desired_release(r, extras={f"image/{ref}": ids[ref] for ref in r.images}).digest
        for r in spec.releases
    }


def converged_release(api: KubeAPI, namespace: str, name: str, digest: str) -> dict[str, Any]:
    """The release's newest record, once it is shown deployed at `digest` with no revision left
    pending or uninstalling (what a killed helm leaves until a deploy repairs it)."""
    statuses = release_statuses(api, namespace, name)
    assert statuses[-1] == "deployed", f"release {name}: {statuses}"
    stuck = [s for s in statuses if s.startswith("pending") or s == "uninstalling"]
    assert not stuck, f"release {name} keeps revisions {statuses}"
    record = decode_release(release_secrets(api, namespace, name)[-1])
    assert record["info"]["description"] == f"{DESCRIPTION_PREFIX}{digest}"
    return record


def pids_using(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (the trial's state folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                argv = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                if str(path) in argv:
                    found.append(f"{entry.name}: {argv}")
    return found
