"""What a kind node's containerd holds in kubelet's namespace, read with `ctr` through
`docker exec`: image names, content blobs and their garbage-collection labels.

An image counts as present only when its name points at the ID and containerd has unpacked it
(the config carries the snapshot label the unpacker sets last), so a load killed half-way never
passes for done.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from laconic_helm import docker, proc
from laconic_helm.errors import UserError

if TYPE_CHECKING:
    from laconic_helm.images import LocalImage

NAMESPACE = "k8s.io"  # where kubelet's CRI looks for images
CERTS_DIR = "/etc/containerd/certs.d"  # where a node's containerd finds per-registry host config
DEFAULT_SNAPSHOTTER = "overlayfs"
GC_ROOT = "containerd.io/gc.root"
HOLD_MARK = "laconic-helm-load"  # the gc.root value the loader sets and clears
SNAPSHOT_LABEL = "containerd.io/gc.ref.snapshot."
_CONTENT_REF = "containerd.io/gc.ref.content."
_CONFIG_LABEL = _CONTENT_REF + "config"
_MANIFEST_LABEL = _CONTENT_REF + "m."

_IMAGE_ROW = re.compile(r"^(\S+)\s+\S+\s+(sha256:[0-9a-f]{64})\s")
_CONTENT_ROW = re.compile(r"^(sha256:[0-9a-f]{64})\s")
_GC_LABEL = re.compile(r"(containerd\.io/gc\.[\w./-]+)=([^,\s]+)")


@dataclass(frozen=True)
class NodeState:
    """What one node's containerd holds in kind's namespace (read once per check)."""

    node: str
    images: dict[str, str]  # image name -> target digest
    blobs: dict[str, dict[str, str]]  # blob digest -> its containerd.io/gc.* labels

    def _configs(self, digest: str, depth: int = 0) -> list[str]:
        labels = self.blobs.get(digest)
        if labels is None or depth > 2:
            return []
        if config := labels.get(_CONFIG_LABEL):
            return [config]
        children = [v for k, v in labels.items() if k.startswith(_MANIFEST_LABEL)]
        return [c for child in children for c in self._configs(child, depth + 1)]

    def complete(self, target: str, image: LocalImage) -> bool:
        """Says whether `target` is `image`, fully imported and unpacked."""
        configs = self._configs(target)
        if image.id in configs:
            configs = [image.id]
        elif target != image.id:
            return False
        if not image.diff_ids:
            return bool(configs)
        # The unpacker labels the config last, once the image's top snapshot is committed. In a
        # snapshotter other than the CRI's, kubelet's containerd unpacks again from the content.
        return any(
            key.startswith(SNAPSHOT_LABEL) and value == image.chain_id
            for config in configs
            for key, value in self.blobs.get(config, {}).items()
        )

    def holds(self, image: LocalImage) -> bool:
        target = self.images.get(image.name)
        return target is not None and self.complete(target, image)

    def retag_source(self, image: LocalImage) -> str | None:
        """Returns another name under which the node holds `image` complete, if any."""
        names = sorted(self.images, key=lambda n: (n.startswith("sha256:"), n))
        for name in names:
            if name != image.name and self.complete(self.images[name], image):
                return name
        return None

    def kept(self) -> set[str]:
        """Blobs containerd's garbage collector keeps: reachable from an image or a GC root.

        A blob held only by the lease of an import that is dying (a killed load) is listed too,
        but may vanish any moment; such blobs count as missing and are sent again.
        """
        kept: set[str] = set()
        todo = [*self.images.values(), *(d for d, ls in self.blobs.items() if GC_ROOT in ls)]
        while todo:
            digest = todo.pop()
            if digest in kept or digest not in self.blobs:
                continue
            kept.add(digest)
            todo += [v for k, v in self.blobs[digest].items() if k.startswith(_CONTENT_REF)]
        return kept

    def marked(self) -> list[str]:
        """Blobs a load of this loader marked as GC roots (an interrupted one left them)."""
        return sorted(d for d, labels in self.blobs.items() if labels.get(GC_ROOT) == HOLD_MARK)


def tail(output: bytes | str) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


async def ctr(node: str, *args: str, check: bool = True) -> proc.Completed:
    return await docker.run("exec", node, "ctr", "-n", NAMESPACE, *args, check=check)


async def get_node_state(node: str) -> NodeState:
    """Reads the node's images and content; raises UserError when its containerd does not answer."""
    images, content = await asyncio.gather(
        ctr(node, "images", "ls", check=False), ctr(node, "content", "ls", check=False)
    )
    for done in (images, content):
        if done.returncode != 0:
            reason = tail(done.stderr or done.stdout)
            raise UserError(f"containerd in node {node} does not answer: {reason}")
    names = {m[1]: m[2] for line in images.text.splitlines() if (m := _IMAGE_ROW.match(line))}
    blobs = {
        m[1]: dict(_GC_LABEL.findall(line))
        for line in content.text.splitlines()
        if (m := _CONTENT_ROW.match(line))
    }
    return NodeState(node, names, blobs)


@dataclass(frozen=True)
class CriConfig:
    """What image handling needs from a node's CRI config (containerd config versions 2, 3)."""

    snapshotter: str = DEFAULT_SNAPSHOTTER  # the one kubelet's containerd unpacks images with
    hosts_dir: str = ""  # where it reads per-registry host config; "" when it reads none


def parse_config(config_dump: str) -> CriConfig:
    """The CriConfig of `containerd config dump` output (defaults when it cannot be read)."""
    try:
        plugins = tomllib.loads(config_dump).get("plugins", {})
    except tomllib.TOMLDecodeError:
        return CriConfig()
    v3 = plugins.get("io.containerd.cri.v1.images", {})
    v2 = plugins.get("io.containerd.grpc.v1.cri", {})
    snapshotter = v3.get("snapshotter") or v2.get("containerd", {}).get("snapshotter")
    hosts = v3.get("registry", {}).get("config_path") or v2.get("registry", {}).get("config_path")
    return CriConfig(str(snapshotter or DEFAULT_SNAPSHOTTER), str(hosts or ""))


async def get_config(node: str) -> CriConfig:
    """The node's CRI config as its containerd reads it (kind reads the snapshotter so too)."""
    done = await docker.run("exec", node, "containerd", "config", "dump", check=False)
    return parse_config(done.text) if done.returncode == 0 else CriConfig()


async def get_snapshotter(node: str) -> str:
    return (await get_config(node)).snapshotter
