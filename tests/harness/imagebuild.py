"""Images built offline for tests and benchmarks: Docker's legacy builder, FROM scratch (or a
base built the same way), one COPY layer per file, so a test decides exactly which layers
two images share and how large each is."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def build(ref: str, context: Path, layers: Sequence[str], base: str | None = None) -> str:
    """Builds `ref` from the files named `layers` (in that order) already written in
    `context`, removes `context`, and returns the image ID."""
    lines = [f"FROM {base or 'scratch'}", *(f"COPY {name} /{name}" for name in layers)]
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    try:
        subprocess.run(
            ["docker", "build", "-q", "-t", ref, str(context)],
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            capture_output=True,
            check=True,
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        check=True,
        text=True,
    )
    return done.stdout.strip()


@dataclass
class Builder:
    """Builds small images offline (FROM scratch + files) under one repository, keeping the
    list of what it built so a fixture can remove them."""

    repo: str
    root: Path
    built: list[str]

    def build(self, tag: str, files: dict[str, bytes], base: str | None = None) -> str:
        ref = f"{self.repo}/{tag}"
        context = self.root / uuid.uuid4().hex
        context.mkdir()
        for name, data in files.items():
            (context / name).write_bytes(data)
        build(ref, context, list(files), base)
        self.built.append(ref)
        return ref

    def remove(self) -> None:
        remove_repository(self.repo)


def remove_repository(repo: str) -> None:
    """Removes every tag under `repo`, the ones a registry push added (`localhost:PORT/<repo>/..`)
    included: those keep the image otherwise, one more on the host for each test run."""
    listed = subprocess.run(
        ["docker", "images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}"],
        capture_output=True,
        check=False,
        text=True,
    )
    refs = []
    for line in listed.stdout.splitlines():
        repository, tag, digest = line.split()
        if repository.startswith(f"{repo}/") or f"/{repo}/" in repository:
            # An image whose tag moved on is left with its pushed digest alone.
            refs += [f"{repository}:{tag}"] if tag != "<none>" else []
            refs += [f"{repository}@{digest}"] if digest != "<none>" else []
    if refs:
        subprocess.run(["docker", "rmi", "-f", *refs], capture_output=True, check=False)
