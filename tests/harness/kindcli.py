"""The kind CLI stand-in (tests/harness/bin/kind): kind's commands over kind-like nodes.

Clusters are node containers labelled and named as kind labels and names them; the cluster's
state is those containers and nothing else, exactly as for kind. The control-plane node runs a
real control plane (etcd, kube-apiserver, kube-controller-manager) with its API port published
on the host, so `kind get kubeconfig` reads /etc/kubernetes/admin.conf from the node and points
at that port, and `kind delete cluster` takes the cluster's whole API state with it. Nodes are
created one after the other and the kubeconfig is exported last, so a create killed half-way
leaves node containers that `kind get clusters` lists and no kubeconfig entry, as with kind.
A test double: it lives under tests/ and is never shipped.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from tests.harness import controlplane, kindconfig, kubelet, nodes, standin, waits
from tests.harness.client import Client

KIND_VERSION = "v0.33.0"
KIND_NETWORK = "kind"  # the docker network kind puts its nodes on


class KindError(Exception):
    """Printed as kind prints errors: `ERROR: <message>`, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise KindError(message)


def _log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _context(name: str) -> str:
    return f"kind-{name}"


def _cluster_name(args: argparse.Namespace, configured: str = "") -> str:
    return args.name or os.environ.get("KIND_CLUSTER_NAME") or configured or "kind"


# --- kubeconfig files, merged and pruned by kind's rules ---------------------------------------


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    unique = list(dict.fromkeys(listed))
    return [Path(p) for p in unique] or [Path.home() / ".kube" / "config"]


def _path_for_merge(explicit: str | None) -> Path:
    paths = _kubeconfig_paths(explicit)
    if len(paths) == 1:
        return paths[0]
    return next((p for p in paths if p.is_file()), paths[-1])


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    return doc or {"apiVersion": "v1", "kind": "Config", "preferences": {}}


def _write_kubeconfig(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)


def merge_kubeconfig(path: Path, kind_doc: dict[str, Any]) -> None:
    """Adds or replaces the cluster, user and context of `kind_doc`; makes it current."""
    doc = _read_kubeconfig(path)
    for section in ("clusters", "users", "contexts"):
        entry = kind_doc[section][0]
        kept = [e for e in doc.get(section) or [] if e.get("name") != entry["name"]]
        replaced = len(kept) != len(doc.get(section) or [])
        if replaced:
            doc[section] = [entry if e.get("name") == entry["name"] else e for e in doc[section]]
        else:
            doc[section] = [*kept, entry]
    doc["current-context"] = kind_doc["current-context"]
    _write_kubeconfig(path, doc)


def remove_from_kubeconfigs(name: str, explicit: str | None) -> None:
    key = _context(name)
    for path in _kubeconfig_paths(explicit):
        if not path.is_file():
            continue
        doc = _read_kubeconfig(path)
        changed = False
        for section in ("clusters", "users", "contexts"):
            entries = doc.get(section) or []
            kept = [e for e in entries if e.get("name") != key]
            if len(kept) != len(entries):
                doc[section] = kept
                changed = True
        if doc.get("current-context") == key:
            doc["current-context"] = ""
            changed = True
        if changed:
            _write_kubeconfig(path, doc)


def _kubeconfig_text(name: str, internal: bool) -> str:
    planes = standin.control_planes(name)
    if not planes:
        raise KindError(
            f"could not locate any control plane nodes for cluster named '{name}'. "
            "Use the --name option to select a different cluster"
        )
    done = subprocess.run(
        ["docker", "exec", planes[0], "busybox", "cat", "/etc/kubernetes/admin.conf"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise KindError(
            f'failed to get cluster internal kubeconfig: command "docker exec --privileged '
            f'{planes[0]} cat /etc/kubernetes/admin.conf" failed with error: exit status '
            f"{done.returncode}"
        )
    doc = yaml.safe_load(done.stdout)
    if not internal:
        doc["clusters"][0]["cluster"]["server"] = standin.api_endpoint(planes[0])
    return yaml.safe_dump(doc, sort_keys=False)


# --- create ------------------------------------------------------------------------------------


def _control_plane_files(
    cluster: str, node: str, api_address: str
) -> tuple[dict[str, bytes], bytes]:
    """The control plane's PKI, audit policy and kubeconfigs as files for the node, and the
    admin kubeconfig that kubeadm init would write once the API serves."""
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        controlplane.write_files(
            controlplane.NODE_LAYOUT,
            root,
            (node, api_address),
            controlplane.NODE_API_PORT,
        )
        for path in root.rglob("*"):
            if path.is_file():
                files[f"/{path.relative_to(root)}"] = path.read_bytes()
        pki_dir = root / controlplane.NODE_LAYOUT.pki.relative_to("/")
        internal = f"https://{node}:{controlplane.NODE_API_PORT}"
        admin = controlplane.admin_kubeconfig(pki_dir, internal, _context(cluster))
    return files, admin.encode()


def _node_specs(
    config: kindconfig.ClusterConfig, api_port: int, files: dict[str, bytes]
) -> list[nodes.NodeSpec]:
    tools = controlplane.find_tools()
    binaries = tuple(
        nodes.Mount(path, str(controlplane.NODE_BIN / name), read_only=True)
        for name, path in tools.items()
    )
    init = controlplane.node_init_script(controlplane.etcd_skips_fsync(tools["etcd"]))
    specs = []
    bootstrap = True
    for name, node in zip(kindconfig.node_names(config), config.nodes, strict=True):
        spec = nodes.NodeSpec(
            name=name,
            role=node.role,
            ports=tuple(node.ports),
            mounts=_mounts(node.mounts),
            network=KIND_NETWORK,
        )
        if node.role == "control-plane" and bootstrap:
            bootstrap = False
            api = nodes.PortMapping(
                controlplane.NODE_API_PORT, api_port, "TCP", config.api_server_address
            )
            spec = replace(
                spec,
                ports=(*spec.ports, api),
                mounts=(*spec.mounts, *binaries),
                files={**files, str(controlplane.NODE_INIT): init.encode()},
                command=("/bin/sh", str(controlplane.NODE_INIT)),
            )
        specs.append(spec)
    return specs


def _mounts(mounts: Sequence[nodes.Mount]) -> tuple[nodes.Mount, ...]:
    """The config's mounts; propagation is dropped, with a warning, where the host's mount
    cannot propagate (a private root, as in some CI sandboxes), instead of failing."""
    kept = []
    for mount in mounts:
        if mount.propagation and not nodes.mount_propagates(mount.host_path):
            print(
                f"WARNING: {mount.host_path} is on a private host mount; mounting it without "
                f"{mount.propagation} propagation (docker refuses it here)",
                file=sys.stderr,
            )
            mount = replace(mount, propagation="")
        kept.append(mount)
    return tuple(kept)


def _node_address(node: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    return (nodes.docker("inspect", "-f", fmt, node).split() or [""])[0]


def _register_nodes(client: Client, config: kindconfig.ClusterConfig) -> None:
    workers = any(n.role == "worker" for n in config.nodes)
    bootstrap = True
    for index, (name, node) in enumerate(
        zip(kindconfig.node_names(config), config.nodes, strict=True)
    ):
        first = node.role == "control-plane" and bootstrap
        bootstrap = bootstrap and not first
        extra = {
            **kindconfig.kubeadm_node_labels(config.kubeadm_patches, first),
            **kindconfig.kubeadm_node_labels(node.kubeadm_patches, first),
            **node.labels,
        }
        taints = [kubelet.CONTROL_PLANE_TAINT] if node.role == "control-plane" and workers else []
        kubelet.register_node(
            client,
            kubelet.NodeInfo(
                name=name,
                address=_node_address(name),
                labels=kubelet.kind_node_labels(name, node.role, extra),
                taints=taints,
                pod_cidr=f"10.244.{index}.0/24",
            ),
        )


def _create(args: argparse.Namespace) -> None:
    if args.config == "-":
        config = kindconfig.parse(sys.stdin.read())
    elif args.config:
        config = kindconfig.parse(Path(args.config).read_text())
    else:
        config = kindconfig.default_config()
    config = replace(config, name=_cluster_name(args, config.name))
    name = config.name
    if nodes.list_nodes(name):
        raise KindError(f'node(s) already exist for a cluster with the name "{name}"')
    kindconfig.validate(config)
    _log(args, f'Creating cluster "{name}" ...')
    image = nodes.ensure_node_image()
    _log(args, f" ✓ Ensuring node image ({image}) 🖼")
    api_port = config.api_server_port or controlplane.free_port()
    files, admin_conf = _control_plane_files(
        name, f"{name}-control-plane", config.api_server_address
    )
    specs = _node_specs(config, api_port, files)
    _ensure_network(KIND_NETWORK)
    try:
        for spec in specs:
            nodes.start_node(name, spec, image)
        for spec in specs:
            nodes.wait_ready(spec.name)
            _write_containerd_config(spec.name, config.containerd_patches)
        _log(args, " ✓ Preparing nodes " + "📦 " * len(specs))
        _log(args, " ✓ Writing configuration 📜")
        client = _wait_for_api(specs[0].name, files, api_port, config.api_server_address)
        _write_admin_conf(specs[0].name, admin_conf)
        _log(args, " ✓ Starting control-plane 🕹️")
        _register_nodes(client, config)
        if len(specs) > 1:
            _log(args, " ✓ Joining worker nodes 🚜")
        kind_doc = yaml.safe_load(_kubeconfig_text(name, internal=False))
        merge_kubeconfig(_path_for_merge(args.kubeconfig), kind_doc)
    except Exception:
        # kind cleans up after its own failures; a signal kills it with nothing cleaned.
        if not args.retain:
            remove_from_kubeconfigs(name, args.kubeconfig)
            nodes.delete_cluster(name)
        raise
    _log(args, f'Set kubectl context to "{_context(name)}"')
    _log(args, "You can now use your cluster with:\n")
    _log(args, f"kubectl cluster-info --context {_context(name)}")


def _ensure_network(name: str) -> None:
    """kind's own network, made by the first cluster and kept: nodes find each other (and a
    registry container) by name on a user-defined network, never on docker's default one."""
    if nodes.docker("network", "ls", "-q", "--filter", f"name=^{name}$").strip():
        return
    done = subprocess.run(["docker", "network", "create", name], capture_output=True, text=True)
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise KindError(f"cannot create network {name}: {done.stderr.strip()}")


def _write_containerd_config(node: str, patches: Sequence[str]) -> None:
    """Puts the config's containerdConfigPatches in the node's /etc/containerd/config.toml,
    where kind merges them; the running containerd is not restarted, so they are only read
    (by whoever checks the node's runtimes), never applied."""
    if not patches:
        return
    nodes.docker(
        "exec", "-i", node, "busybox", "sh", "-c",
        "busybox mkdir -p /etc/containerd && busybox cat > /etc/containerd/config.toml",
        input=("\n".join(["version = 2", *patches]) + "\n").encode(),  # kind's base config's
    )  # fmt: skip


def _wait_for_api(plane: str, files: dict[str, bytes], port: int, address: str) -> Client:
    with tempfile.TemporaryDirectory() as tmp:
        pki_dir = Path(tmp)
        for name in ("ca.crt", "harness.crt", "harness.key"):
            (pki_dir / name).write_bytes(files[str(controlplane.NODE_LAYOUT.pki / name)])
        host = "127.0.0.1" if address in ("0.0.0.0", "") else address
        client = Client(controlplane.credentials(pki_dir, f"https://{host}:{port}", "harness"))
    try:
        controlplane.wait_until_serving(
            client, waits.CEILING, lambda: f"see /var/log/kubernetes/*.log in node {plane}"
        )
    except RuntimeError as exc:
        raise KindError(f"failed to init node with kubeadm: {exc}") from exc
    return client


def _write_admin_conf(plane: str, admin_conf: bytes) -> None:
    nodes.docker(
        "exec",
        "-i",
        plane,
        "sh",
        "-c",
        "busybox cat > /etc/kubernetes/admin.conf && busybox chmod 600 /etc/kubernetes/admin.conf",
        input=admin_conf,
    )


# --- the other commands ------------------------------------------------------------------------


def _delete(args: argparse.Namespace) -> None:
    name = _cluster_name(args)
    _log(args, f'Deleting cluster "{name}" ...')
    found = nodes.list_nodes(name)
    remove_from_kubeconfigs(name, args.kubeconfig)
    if found:
        nodes.delete_cluster(name)
        _log(args, "Deleted nodes: [" + " ".join(f'"{n}"' for n in found) + "]")


def _get_clusters(args: argparse.Namespace) -> None:
    clusters = nodes.list_clusters()
    if not clusters:
        _log(args, "No kind clusters found.")
    for cluster in clusters:
        print(cluster)


def _get_nodes(args: argparse.Namespace) -> None:
    if args.all_clusters:
        found = [n for c in nodes.list_clusters() for n in nodes.list_nodes(c)]
        if not found:
            _log(args, "No kind nodes for any cluster.")
    else:
        name = _cluster_name(args)
        found = nodes.list_nodes(name)
        if not found:
            _log(args, f'No kind nodes found for cluster "{name}".')
    for node in found:
        print(node)


def _get_kubeconfig(args: argparse.Namespace) -> None:
    print(_kubeconfig_text(_cluster_name(args), args.internal))


def _export_kubeconfig(args: argparse.Namespace) -> None:
    name = _cluster_name(args)
    doc = yaml.safe_load(_kubeconfig_text(name, args.internal))
    merge_kubeconfig(_path_for_merge(args.kubeconfig), doc)
    _log(args, f'Set kubectl context to "{_context(name)}"')


def _version(args: argparse.Namespace) -> None:
    del args
    print(f"kind {KIND_VERSION} (laconic-helm test stand-in) linux/amd64")


def _parser() -> argparse.ArgumentParser:
    root = _Parser(prog="kind", description="kind stand-in for laconic-helm's tests")
    root.add_argument("-q", "--quiet", action="store_true")
    root.add_argument("-v", "--verbosity", type=int, default=0)
    verbs = root.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def command(parent: Any, name: str, run: Any, *, with_name: bool = True) -> Any:
        cmd = parent.add_parser(name)
        cmd.set_defaults(run=run)
        if with_name:
            cmd.add_argument("-n", "--name", default="")
        cmd.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
        return cmd

    create = verbs.add_parser("create").add_subparsers(dest="what", required=True)
    cmd = command(create, "cluster", _create)
    cmd.set_defaults(error_prefix="failed to create cluster: ")
    cmd.add_argument("--config", default="")
    cmd.add_argument("--image", default="")
    cmd.add_argument("--retain", action="store_true")
    cmd.add_argument("--wait", default="0s")
    cmd.add_argument("--kubeconfig", default="")

    delete = verbs.add_parser("delete").add_subparsers(dest="what", required=True)
    command(delete, "cluster", _delete).add_argument("--kubeconfig", default="")

    get = verbs.add_parser("get").add_subparsers(dest="what", required=True)
    command(get, "clusters", _get_clusters, with_name=False)
    command(get, "nodes", _get_nodes).add_argument("-A", "--all-clusters", action="store_true")
    command(get, "kubeconfig", _get_kubeconfig).add_argument("--internal", action="store_true")

    export = verbs.add_parser("export").add_subparsers(dest="what", required=True)
    cmd = command(export, "kubeconfig", _export_kubeconfig)
    cmd.add_argument("--internal", action="store_true")
    cmd.add_argument("--kubeconfig", default="")

    command(verbs, "version", _version, with_name=False)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    # kind installs no signal handlers: Ctrl-C stops it on the spot, leaving what it made.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        args = _parser().parse_args(argv)
    except KindError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    try:
        args.run(args)
    except (KindError, kindconfig.ConfigError, RuntimeError) as exc:
        # RuntimeError: docker or the control plane failed underneath.
        print(f"ERROR: {getattr(args, 'error_prefix', '')}{exc}", file=sys.stderr)
        return 1
    return 0
