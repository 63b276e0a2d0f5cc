"""Registry mode: the spec's images reach the nodes through an OCI registry.

`docker push` sends only the layers the registry lacks and a node pulls only the layers it
lacks, so a rebuilt top layer costs that layer, and nodes the driver cannot reach (provider
existing, more than one host) get the images at all. On kind the registry is a container on
this host (`<cluster>-registry`, blobs in a volume of the same name, on the nodes' docker
network); the nodes' containerd find it through `/etc/containerd/certs.d` (the cluster is
created with that config path), and the driver pulls each image into every node itself, so a
pod starts from an image already there. The releases run the images by the pushed digest.

Every part converges: a pushed manifest is looked up, not pushed again (docker records the
digest, the registry is asked whether it still has it); a killed push resumes from the blobs
the registry kept; a killed pull from the content the node kept; a registry container that is
gone or stopped is made or started again, on its old volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from laconic_helm import docker
from laconic_helm.actions import Action
from laconic_helm.concurrency import together
from laconic_helm.containerd import (
    CERTS_DIR,
    NAMESPACE,
    NodeState,
    get_config,
    get_snapshotter,
    tail,
)
from laconic_helm.errors import ImageLoadError, UserError
from laconic_helm.images import LocalImage, containerd_name
from laconic_helm.output import human_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from laconic_helm.output import Reporter
    from laconic_helm.spec import Spec

STEP = "images"
CONTAINER_PORT = 5000  # the distribution registry's port inside its container
DATA_DIR = "/var/lib/registry"
OWNER_LABEL = "dev.laconic-helm.registry"  # on the registry container: the cluster it serves
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
_PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_LAYER_LINE = re.compile(r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from .*)$")
_HTTP_TIMEOUT = 5.0
_TICK = 5.0  # seconds between progress lines


@dataclass(frozen=True)
class Where:
    """Where the images go: `prefix` names them (`host[/path]`), `container` is the local
    registry's container (None for an external registry)."""

    prefix: str
    container: str | None = None
    image: str = ""
    port: int = 0
    credentials: tuple[str, str] | None = None  # (namespace, name) of the nodes' pull Secret

    @property
    def host(self) -> str:
        return self.prefix.split("/", 1)[0]

    @property
    def local(self) -> bool:
        return self.container is not None


def where(spec: Spec) -> Where:
    """The registry the spec's images are pushed to."""
    delivery = spec.image_delivery
    if (external := delivery.external) is not None:
        secret = external.credentials_secret
        return Where(external.address, credentials=secret and (secret.namespace, secret.name))
    return local_target(spec.cluster.name, delivery.local.port, delivery.local.image)


def local_target(cluster: str, port: int, image: str) -> Where:
    """The local registry of kind cluster `cluster`: container and volume `<cluster>-registry`,
    published on 127.0.0.1:`port`; images are named `localhost:<port>/...` (docker pushes to
    a loopback registry over plain HTTP; the nodes' host config sends pulls to the container)."""
    return Where(f"localhost:{port}", f"{cluster}-registry", image, port)


def repository(target: Where, image: LocalImage) -> tuple[str, str]:
    """The repository (under the registry host) and tag an image is pushed as: docker.io's
    path as it is (`laconicnetwork/agave`), another registry's host kept (`ghcr.io/x/y`)."""
    name = containerd_name(image.ref).split("@", 1)[0]
    domain, _, path = name.partition("/")
    path, _, tag = path.rpartition(":")
    if domain != "docker.io":
        path = f"{domain}/{path}"
    under = target.prefix.partition("/")[2]
    return (f"{under}/{path}" if under else path), tag


def pushed_name(target: Where, image: LocalImage) -> str:
    """The reference `docker push` is given: `<prefix>/<path>:<tag>`."""
    path, tag = repository(target, image)
    return f"{target.host}/{path}:{tag}"


def digest_ref(target: Where, image: LocalImage, digest: str) -> str:
    """The reference nodes and pods use: `<host>/<path>@<digest>`."""
    path, _ = repository(target, image)
    return f"{target.host}/{path}@{digest}"


def known_digest(target: Where, image: LocalImage) -> str | None:
    """The digest docker recorded when it last pushed this image ID to the registry."""
    path, _ = repository(target, image)
    wanted = f"{target.host}/{path}@"
    return next((d.removeprefix(wanted) for d in image.repo_digests if d.startswith(wanted)), None)


def hosts_toml(target: Where) -> str:
    """The nodes' containerd host config: pulls of `localhost:<port>/...` go to the registry
    container by its name on the nodes' network."""
    return (
        f'[host."http://{target.container}:{CONTAINER_PORT}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def hosts_path(target: Where) -> str:
    return f"{CERTS_DIR}/{target.host}/hosts.toml"


# -- observing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """The local registry container as docker shows it."""

    running: bool
    image: str
    port: int | None  # the host port bound to the registry's, on 127.0.0.1
    networks: tuple[str, ...]
    ours: bool = True  # made by this tool (its label): only then may it be replaced


@dataclass(frozen=True)
class RegistrySeen:
    """What registry mode found: the container, the nodes' host config and images, and which
    of the spec's images the registry holds (ref -> digest, None when it must be pushed)."""

    container: Container | None
    network: str | None  # the nodes' docker network
    hosts: dict[str, str | None]  # node -> its hosts.toml for the registry (None: absent)
    digests: dict[str, str | None]
    nodes: dict[str, NodeState]


async def observe_container(name: str) -> Container | None:
    done = await docker.run("container", "inspect", name, check=False)
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout)[0]
    bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).get(
        f"{CONTAINER_PORT}/tcp"
    ) or []
    port = next((int(b["HostPort"]) for b in bindings if b.get("HostPort")), None)
    networks = tuple(sorted((info.get("NetworkSettings") or {}).get("Networks") or {}))
    config = info["Config"]
    ours = (config.get("Labels") or {}).get(OWNER_LABEL) == name
    return Container(bool(info["State"]["Running"]), config["Image"], port, networks, ours)


async def node_network(nodes: Sequence[str]) -> str | None:
    """The docker network the nodes are on (kind's `kind`), where the registry must be too."""
    if not nodes:
        return None
    fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
    done = await docker.run("container", "inspect", "--format", fmt, nodes[0], check=False)
    names = done.text.split() if done.returncode == 0 else []  # a node still to be made
    return names[0] if names else None


async def read_hosts(node: str, target: Where) -> str | None:
    """The node's hosts.toml for the registry, read with `docker cp` (a node has no shell we
    may count on)."""
    done = await docker.run("cp", f"{node}:{hosts_path(target)}", "-", check=False)
    if done.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        data = tar.extractfile(member) if member else None
        return data.read().decode(errors="replace") if data else None


def _request(url: str) -> bytes | None:
    request = urllib.request.Request(url, headers={"Accept": ",".join(MANIFEST_TYPES)})
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT) as answer:
            return bytes(answer.read())
    except (urllib.error.URLError, OSError):
        return None


async def manifest(target: Where, path: str, digest: str) -> dict[str, Any] | None:
    """The manifest the local registry serves for `path@digest`, or None (not there, or the
    registry does not answer)."""
    body = await asyncio.to_thread(
        _request, f"http://127.0.0.1:{target.port}/v2/{path}/manifests/{digest}"
    )
    try:
        return json.loads(body) if body is not None else None
    except ValueError:
        return None


async def registry_digest(target: Where, image: LocalImage, running: bool) -> str | None:
    """The digest of `image` in the registry, or None when it must be pushed. An external
    registry is trusted to keep what docker pushed to it; the local one is asked."""
    digest = known_digest(target, image)
    if digest is None or not target.local:
        return digest
    if not running:
        return None
    path, _ = repository(target, image)
    return digest if await manifest(target, path, digest) is not None else None


async def _not_reading_hosts(nodes: Sequence[str]) -> list[str]:
    """The nodes whose containerd reads no per-registry host config from CERTS_DIR: those of a
    cluster made before registry mode (the setting is fixed when a node is made)."""
    found = await asyncio.gather(*map(get_config, nodes))
    return [node for node, cri in zip(nodes, found, strict=True) if cri.hosts_dir != CERTS_DIR]


async def reads_hosts(nodes: Sequence[str]) -> bool:
    return not await _not_reading_hosts(nodes)


async def check_hosts_dir(nodes: Sequence[str]) -> None:
    """Raises UserError naming the first node that reads no registry host config."""
    if unready := await _not_reading_hosts(nodes):
        raise UserError(
            f"node {unready[0]}: its containerd does not read registry host config from "
            f"{CERTS_DIR}, which registry mode needs (the cluster predates it)",
            hint="use imageDelivery.mode: stream, or remake the cluster "
            "(`down --delete-cluster`, then deploy; loaded images and node data are lost)",
        )


async def observe(
    target: Where,
    images: Sequence[LocalImage],
    nodes: Mapping[str, NodeState],
    *,
    check_nodes: bool = True,
) -> RegistrySeen:
    """Reads the registry container, the nodes' host config and what the registry holds;
    with `check_nodes` (nodes that exist and were not checked yet) raises UserError for a
    node that reads no host config (`check_hosts_dir`)."""
    container = await observe_container(target.container) if target.local else None
    running = container is not None and container.running and container.port == target.port
    names = sorted(nodes)
    local = target.local
    _, network, hosts_found, digests = await asyncio.gather(
        check_hosts_dir(names) if local and check_nodes else _none(),
        node_network(names) if local else _none(),
        asyncio.gather(*(read_hosts(n, target) for n in names)) if local else _none(),
        asyncio.gather(*(registry_digest(target, i, running) for i in images)),
    )
    hosts = dict(zip(names, hosts_found or [None] * len(names), strict=True))
    return RegistrySeen(
        container,
        network,
        hosts if target.local else {},
        {i.ref: d for i, d in zip(images, digests, strict=True)},
        dict(nodes),
    )


async def _none() -> None:
    return None


# -- planning ---------------------------------------------------------------------------------


def plan(target: Where, images: Sequence[LocalImage], seen: RegistrySeen) -> list[Action]:
    """The registry container, then the nodes' host config, the pushes, the pulls."""
    actions = []
    if target.local:
        c = seen.container
        name = str(target.container)
        if c is not None and not c.ours:
            raise UserError(
                f"container {name} exists and is not this tool's registry (no label "
                f"{OWNER_LABEL}={name}); it is left alone",
                hint="remove or rename it, or use imageDelivery.mode: stream",
            )
        if c is None:
            actions.append(Action(STEP, "create-registry", name, f"127.0.0.1:{target.port}"))
        elif c.image != target.image or c.port != target.port:
            have = f"{c.image} on port {c.port}"
            actions.append(
                Action(STEP, "create-registry", name, f"replacing {have}; its volume is kept")
            )
        else:
            if not c.running:
                actions.append(Action(STEP, "start-registry", name))
            if seen.network and seen.network not in c.networks:
                actions.append(Action(STEP, "connect-registry", name, f"network {seen.network}"))
        wanted = hosts_toml(target)
        for node, text in sorted(seen.hosts.items()):
            if text != wanted:
                actions.append(Action(STEP, "configure-node", node, hosts_path(target)))
    for image in images:
        if seen.digests.get(image.ref) is None:
            actions.append(Action(STEP, "push-image", image.ref, f"to {target.prefix}"))
    if target.local:
        for image in images:
            # Before a push, the digest docker recorded at its last one: a push of the same
            # layers gives it again, and a node holding it needs no pull.
            digest = seen.digests.get(image.ref) or known_digest(target, image)
            for node, state in sorted(seen.nodes.items()):
                if digest is None or not state.holds(_as_pulled(target, image, digest)):
                    actions.append(Action(STEP, "pull-image", image.ref, f"into {node}"))
    return actions


def outcomes(
    target: Where, images: Sequence[LocalImage], seen: RegistrySeen
) -> dict[str, dict[str, str]]:
    """Per image: the registry (`up-to-date` or `push-image`), then each node (`up-to-date` or
    `pull-image`), for `status`."""
    planned = {(a.verb, a.target, a.detail) for a in plan(target, images, seen)}
    found = {}
    for image in images:
        pushed = ("push-image", image.ref, f"to {target.prefix}") in planned
        where = {target.prefix: "push-image" if pushed else "up-to-date"}
        for node in sorted(seen.nodes):
            pulled = ("pull-image", image.ref, f"into {node}") in planned
            where[node] = "pull-image" if pulled else "up-to-date"
        found[image.ref] = where
    return found


def _as_pulled(target: Where, image: LocalImage, digest: str) -> LocalImage:
    """The image under the name a node holds it by once pulled."""
    return dataclasses.replace(image, name=digest_ref(target, image, digest))


def references(target: Where, images: Sequence[LocalImage], seen: RegistrySeen) -> dict[str, str]:
    """Each image's reference for the releases: by digest when the registry has it; otherwise
    (`plan` before the push) as `predicted_references` says."""
    predicted = predicted_references(target, images)
    return {
        i.ref: digest_ref(target, i, d) if (d := seen.digests.get(i.ref)) else predicted[i.ref]
        for i in images
    }


def predicted_references(target: Where, images: Sequence[LocalImage]) -> dict[str, str]:
    """The references before the registry was asked: the digest docker recorded at its last
    push of the image ID (a push of the same layers gives it again), else the tag pushed."""
    return {
        i.ref: digest_ref(target, i, d)
        if (d := known_digest(target, i))
        else pushed_name(target, i)
        for i in images
    }


# -- acting -----------------------------------------------------------------------------------


@dataclass
class Pushed:
    """One image's outcome in registry mode, for the step's line and JSON report."""

    image: str
    reference: str
    status: str  # up-to-date | push-image
    bytes_pushed: int
    nodes: dict[str, str]  # node -> up-to-date | pull-image
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        pulled = sorted(n for n, s in self.nodes.items() if s == "pull-image")
        if self.status == "up-to-date" and not pulled:
            return f"  {self.image}: in the registry as {self.reference}"
        parts = []
        if self.status == "push-image":
            parts.append(f"pushed ({human_bytes(self.bytes_pushed)})")
        if pulled:
            parts.append(f"pulled into {', '.join(pulled)}")
        return f"  {self.image}: {' and '.join(parts)} as {self.reference} ({self.seconds:.1f} s)"


async def ensure_container(target: Where, seen: RegistrySeen, actions: Sequence[Action]) -> None:
    """Creates, starts or connects the local registry container as planned."""
    name = str(target.container)
    verbs = {a.verb for a in actions if a.target == name}
    if "create-registry" in verbs:
        await docker.run("rm", "--force", name, check=False)  # the volume stays
        await docker.run(
            "run", "--detach", "--name", name, "--restart", "unless-stopped",
            "--label", f"{OWNER_LABEL}={name}",
            "--publish", f"127.0.0.1:{target.port}:{CONTAINER_PORT}",
            "--volume", f"{name}:{DATA_DIR}",
            *(["--network", seen.network] if seen.network else []),
            target.image,
        )  # fmt: skip
    elif "start-registry" in verbs:
        await docker.run("start", name)
    if "connect-registry" in verbs and seen.network:
        done = await docker.run("network", "connect", seen.network, name, check=False)
        if done.returncode != 0 and "already exists" not in done.stderr.decode(errors="replace"):
            raise ImageLoadError(
                f"cannot connect {name} to network {seen.network}: {tail(done.stderr)}"
            )
    if verbs & {"create-registry", "start-registry"}:
        await _wait_serving(target)


async def _wait_serving(target: Where, ceiling: float = 60.0) -> None:
    deadline = time.monotonic() + ceiling
    while await asyncio.to_thread(_request, f"http://127.0.0.1:{target.port}/v2/") is None:
        if time.monotonic() > deadline:
            raise ImageLoadError(
                f"the registry {target.container} does not answer on 127.0.0.1:{target.port}",
                hint=f"docker logs {target.container}",
            )
        await asyncio.sleep(0.2)


async def remove_local(cluster: str) -> bool:
    """Removes the local registry container this tool made for `cluster` (found by its label,
    so a same-named container of someone else stays); its volume is kept, so a new cluster's
    first push finds the layers there. Returns whether one was removed."""
    label = f"{OWNER_LABEL}={local_target(cluster, 0, '').container}"
    done = await docker.run("ps", "-aq", "--filter", f"label={label}")
    found = done.text.split()
    if found:
        await docker.run("rm", "--force", *found)
    return bool(found)


async def configure_node(node: str, target: Where) -> None:
    """Writes the node's hosts.toml for the registry (containerd reads it at each pull)."""
    buf = io.BytesIO()
    data = hosts_toml(target).encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = f"certs.d/{target.host}"
        for d in ("certs.d", folder):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo(f"{folder}/hosts.toml")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    await docker.run("cp", "-", f"{node}:/etc/containerd", input=buf.getvalue())


@contextlib.asynccontextmanager
async def _ticking(reporter: Reporter, text: Callable[[], str]) -> AsyncIterator[None]:
    """A progress line every few seconds while the block runs: docker push and ctr pull say
    nothing a pipe can follow until a layer is done, and a 10 GB image takes minutes."""
    start = time.monotonic()

    async def tick() -> None:
        while True:
            await asyncio.sleep(_TICK)
            reporter.line(f"  {text()} ({time.monotonic() - start:.0f} s)")

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def push(target: Where, image: LocalImage, reporter: Reporter) -> tuple[str, int]:
    """Pushes one image; returns its digest and the compressed bytes of the layers sent."""
    name = pushed_name(target, image)
    await docker.run("tag", image.ref, name)
    sent_ids: set[str] = set()
    output: list[str] = []
    layers = len(image.diff_ids)

    def progress() -> str:
        done = sum(1 for line in output if _LAYER_LINE.match(line))
        return f"pushing {image.ref} to {target.prefix}: {done}/{layers} layers done"

    async with _ticking(reporter, progress):
        process = await docker.spawn("push", name, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode(errors="replace"):
            output.append(line.strip())
            if (m := _LAYER_LINE.match(line.strip())) and m[2] == "Pushed":
                sent_ids.add(m[1])
        if await process.wait() != 0:
            raise ImageLoadError(
                f"docker push {name} failed: {output[-1] if output else 'no output'}",
                hint="re-run to continue; layers the registry received are kept",
            )
    digest = next((m[1] for line in output if (m := _PUSHED_DIGEST.search(line))), None)
    if digest is None:
        raise ImageLoadError(f"docker push {name} reported no digest")
    return digest, await _bytes_of(target, image, digest, sent_ids)


async def _bytes_of(target: Where, image: LocalImage, digest: str, sent: set[str]) -> int:
    """The compressed size of the layers docker said it pushed (short diff IDs)."""
    if not target.local or not sent:
        return 0
    path, _ = repository(target, image)
    found = await manifest(target, path, digest)
    layers = (found or {}).get("layers") or []
    return sum(
        int(layer.get("size") or 0)
        for layer, diff_id in zip(layers, image.diff_ids, strict=False)
        if diff_id.removeprefix("sha256:")[:12] in sent
    )


async def pull(node: str, reference: str, snapshotter: str) -> None:
    """Pulls `reference` into the node's kubelet namespace through the registry host config,
    unpacked for `snapshotter` (the one kubelet's containerd uses)."""
    done = await docker.run(
        "exec", node, "ctr", "-n", NAMESPACE, "images", "pull",
        "--hosts-dir", CERTS_DIR, "--snapshotter", snapshotter, reference,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ImageLoadError(
            f"pull of {reference} into node {node} failed: {tail(done.stderr or done.stdout)}",
            hint="re-run to continue; layers that reached the node are kept",
        )


async def apply(
    target: Where,
    images: Sequence[LocalImage],
    seen: RegistrySeen,
    actions: Sequence[Action],
    reporter: Reporter,
) -> tuple[list[Pushed], dict[str, str]]:
    """Carries out the plan; returns each image's outcome and the references the releases run
    (by digest). Pushes go one at a time, in order; each image's pulls start as soon as its
    push is done, beside the next push (a push compresses on the host, a pull unpacks in the
    nodes: on separate cores, the two overlap)."""
    start = time.monotonic()
    if target.local:
        await ensure_container(target, seen, actions)
        configure = [a.target for a in actions if a.verb == "configure-node"]
        await together(*(configure_node(n, target) for n in configure))
    to_push = {a.target for a in actions if a.verb == "push-image"}
    pulls: dict[str, list[str]] = {}
    for a in actions:
        if a.verb == "pull-image":
            pulls.setdefault(a.target, []).append(a.detail.removeprefix("into "))
    pushing = asyncio.Lock()  # first come, first served: pushes keep the images' order
    snapshotters: dict[str, asyncio.Future[str]] = {}  # read once per node

    def snapshotter(node: str) -> asyncio.Future[str]:
        if node not in snapshotters:
            snapshotters[node] = asyncio.ensure_future(get_snapshotter(node))
        return snapshotters[node]

    async def deliver(image: LocalImage) -> Pushed:
        digest, sent = seen.digests.get(image.ref), 0
        if image.ref in to_push:
            async with pushing:
                digest, sent = await push(target, image, reporter)
        assert digest is not None  # pushed above when it was not there
        ref = digest_ref(target, image, digest)
        pulled = _as_pulled(target, image, digest)
        nodes = sorted(  # planned, or a push gave another digest than docker had recorded
            n for n, state in seen.nodes.items()
            if n in pulls.get(image.ref, []) or not state.holds(pulled)
        )  # fmt: skip
        if nodes:
            line = f"pulling {ref} into {', '.join(nodes)}"
            async with _ticking(reporter, lambda: line):
                kinds = [await snapshotter(n) for n in nodes]
                await together(*(pull(n, ref, k) for n, k in zip(nodes, kinds, strict=True)))
        return Pushed(
            image.ref,
            ref,
            "push-image" if image.ref in to_push else "up-to-date",
            sent,
            {n: "pull-image" if n in nodes else "up-to-date" for n in sorted(seen.nodes)},
            round(time.monotonic() - start, 3),
        )

    results = await together(*map(deliver, images))
    return results, {r.image: r.reference for r in results}


def check_local_images(images: Sequence[LocalImage]) -> None:
    """Raises UserError for an image that cannot be pushed under a name (digest references)."""
    for image in images:
        if "@" in image.ref:
            raise UserError(f"image {image.ref}: registry mode pushes by repository:tag")
