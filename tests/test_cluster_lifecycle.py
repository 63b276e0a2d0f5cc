"""Tests of cluster/lifecycle.py: whole ensure and delete runs against a kind (the stand-in,
and real kind under the `cluster` marker), through the package's exports, as deploy uses them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import laconic_helm
from laconic_helm import cluster, handoff, preflight
from laconic_helm.cluster import ClusterResult, Record
from laconic_helm.errors import ClusterError, UserError
from tests.cluster_support import free_port, make_cluster, private_state, verbs


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_state(tmp_path, monkeypatch)


def local_port(container_port: int, host_port: int) -> dict[str, Any]:
    return {"containerPort": container_port, "hostPort": host_port, "listenAddress": "127.0.0.1"}


@dataclass
class KindLog:
    """Every kind command the driver runs, with the pid that ran it."""

    path: Path

    def calls(self) -> list[tuple[int, list[str]]]:
        if not self.path.exists():
            return []
        return [
            (int(pid), args.split())
            for pid, _, args in (line.partition(" ") for line in self.path.read_text().splitlines())
        ]

    def verbs(self) -> list[str]:
        return [" ".join(args[:2]) for _, args in self.calls()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def kind_log(kind_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KindLog:
    """Puts a recorder in front of the kind under test (exec keeps kind's own pid)."""
    log = KindLog(tmp_path / "kind-calls.log")
    wrapper = tmp_path / "kind-recorder"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {log.path}\nexec {kind_cli.binary} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("LACONIC_HELM_KIND", str(wrapper))
    return log


def node_ids(name: str) -> list[str]:
    return [n.id for n in asyncio.run(cluster.list_nodes(name))]


async def checked_ensure(spec: Any, **flags: bool) -> ClusterResult:
    """The host checks, then ensure_cluster, on one observation: as a deploy runs them (the
    cluster package leaves those checks to preflight)."""
    state = await cluster.observe_cluster(spec)
    await preflight.check_host(spec, state)
    return await cluster.ensure_cluster(spec, state=state, **flags)


@pytest.mark.unit
def test_the_cluster_package_does_not_import_preflight() -> None:
    """preflight reads the cluster package; the package reaching back into preflight was a
    cycle, and ran the host checks twice per deploy."""
    code = "import sys, laconic_helm.cluster; assert 'laconic_helm.preflight' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(Path(laconic_helm.__file__).parent.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_create_rerun_refuse_recreate_delete(kind_cli: Any, kind_log: KindLog) -> None:
    name = kind_cli.new_name()
    port = free_port()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name, ports=[local_port(80, port)])

    first = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(first.actions)) == [("create-cluster", name)]
    assert first.state.owned and first.state.api_ready and first.state.problems == ()
    assert first.state.node_labels is not None
    assert first.state.node_labels["ingress-ready"] == "true"
    rec = cluster.read_record(name)
    assert rec is not None and rec.status == "created"
    assert list(rec.node_ids) == node_ids(name)
    kubeconfig = first.access.kubeconfig
    assert kubeconfig is not None and first.access.context == f"kind-{name}"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    api = first.state.api_endpoint
    server = cluster.kubeconfig_server(kubeconfig.read_text(), f"kind-{name}")
    assert api is not None and server is not None and cluster.server_port(server) == api.host_port
    # The node mounts the cluster's transfer folder (read-only), where image streams go.
    transfer = asyncio.run(handoff.mounted_folder(f"{name}-control-plane"))
    assert transfer == cluster.cluster_dir(name) / handoff.FOLDER_NAME
    assert stat.S_IMODE(transfer.stat().st_mode) == 0o700

    # A re-run reads and changes nothing, and asks kind nothing: the driver's own copy of the
    # kubeconfig still reaches the API.
    kind_log.clear()
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and not again.changed
    assert kind_log.verbs() == []
    assert again.state.api_ready and again.state.node_labels is not None

    # A stale copy (another port) is not trusted: kind is asked again, and the copy refreshed.
    kubeconfig.write_text(kubeconfig.read_text().replace(f":{api.host_port}", ":1"))
    kind_log.clear()
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and set(kind_log.verbs()) == {"get kubeconfig"}
    assert (
        cluster.server_port(cluster.kubeconfig_server(kubeconfig.read_text(), f"kind-{name}") or "")
        == api.host_port
    )
    assert list(rec.node_ids) == node_ids(name)

    # Ports are fixed at creation: a new one is named, and nothing changes without the flag.
    extra = free_port()
    wider = make_cluster(
        **kind_cli.cluster_fields(), name=name, ports=[local_port(80, port), local_port(443, extra)]
    )
    with pytest.raises(UserError) as caught:
        asyncio.run(cluster.ensure_cluster(wider))
    assert caught.value.message == (
        f"cluster {name}: differs from the spec (host port {extra}/TCP is not published "
        f"(spec: 127.0.0.1:{extra} -> node port 443)); these are fixed when a kind cluster "
        "is created"
    )
    assert list(rec.node_ids) == node_ids(name)

    rebuilt = asyncio.run(cluster.ensure_cluster(wider, recreate=True))
    assert verbs(list(rebuilt.actions)) == [("delete-cluster", name), ("create-cluster", name)]
    assert rebuilt.state.publishes(extra, "TCP") and rebuilt.state.owned
    assert set(node_ids(name)).isdisjoint(rec.node_ids)

    # down --delete-cluster: ours, so deleted, with its state; a repeat is a no-op.
    assert verbs(asyncio.run(cluster.delete_cluster(wider))) == [("delete-cluster", name)]
    assert node_ids(name) == [] and not cluster.cluster_dir(name).exists()
    assert asyncio.run(cluster.delete_cluster(wider)) == []


def test_a_killed_create_is_rebuilt(kind_cli: Any, kind_log: KindLog) -> None:
    name = kind_cli.new_name()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name)

    async def create_then_kill() -> None:
        task = asyncio.create_task(cluster.ensure_cluster(spec))
        while not await cluster.list_nodes(name):
            assert not task.done(), task
            await asyncio.sleep(0.1)
        (pid,) = [pid for pid, args in kind_log.calls() if args[:2] == ["create", "cluster"]]
        os.killpg(pid, signal.SIGKILL)  # as ansible kills the whole process group
        with pytest.raises(ClusterError, match=f"cluster {name}: kind create failed"):
            await task

    asyncio.run(create_then_kill())
    assert name in kind_cli.clusters()  # kind still lists the half-made cluster
    half = asyncio.run(cluster.observe_cluster(spec))
    assert half.owned and half.unfinished
    assert "laconic-helm's create of it never finished" in half.problems

    rebuilt = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(rebuilt.actions)) == [("delete-cluster", name), ("create-cluster", name)]
    assert rebuilt.state.api_ready and rebuilt.state.problems == ()
    rec = cluster.read_record(name)
    assert rec is not None and rec.status == "created"


def test_a_cluster_made_by_someone_else(kind_cli: Any, tmp_path: Path) -> None:
    name = kind_cli.new_name()
    config = tmp_path / "kind.yaml"
    config.write_text(
        cluster.render_kind_config(make_cluster(**kind_cli.cluster_fields(), name=name))
    )
    kind_cli.run("create", "cluster", "--name", name, "--config", str(config))
    before = node_ids(name)

    # As specified and healthy: used as it is, and still not ours.
    fits = make_cluster(**kind_cli.cluster_fields(), name=name)
    used = asyncio.run(cluster.ensure_cluster(fits))
    assert used.actions == () and not used.state.owned

    # A change is needed: refused even with --recreate-cluster, and nothing is deleted.
    port = free_port()
    clash = make_cluster(**kind_cli.cluster_fields(), name=name, ports=[local_port(80, port)])
    with pytest.raises(UserError) as caught:
        asyncio.run(cluster.ensure_cluster(clash, recreate=True))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"cluster {name}: differs from the spec (host port {port}/TCP is not published (spec: "
        f"127.0.0.1:{port} -> node port 80)) and laconic-helm has no record of creating it, "
        "so laconic-helm will not change it"
    )
    with pytest.raises(UserError, match="will not delete it"):
        asyncio.run(cluster.delete_cluster(fits))
    assert node_ids(name) == before

    # --adopt-cluster makes it ours; from then on it may be deleted.
    adopted = asyncio.run(cluster.ensure_cluster(fits, adopt=True))
    assert verbs(list(adopted.actions)) == [("adopt-cluster", name)]
    assert asyncio.run(cluster.observe_cluster(fits)).owned
    assert verbs(asyncio.run(cluster.delete_cluster(fits))) == [("delete-cluster", name)]
    assert node_ids(name) == []


def test_a_port_held_by_another_process_stops_before_any_change(
    kind_cli: Any, kind_log: KindLog
) -> None:
    name = kind_cli.new_name()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = make_cluster(
            **kind_cli.cluster_fields(),
            name=name,
            ports=[local_port(80, free_port()), local_port(443, port)],
        )
        with pytest.raises(UserError) as caught:
            asyncio.run(checked_ensure(spec))
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"cluster.ports[1]: host port {port}/TCP on 127.0.0.1 is in use by another process"
    )
    assert kind_log.verbs() == [] and node_ids(name) == []
    assert not cluster.record_path(name).exists()


def test_a_missing_mount_source_stops_before_any_change(
    kind_cli: Any, kind_log: KindLog, tmp_path: Path
) -> None:
    name = kind_cli.new_name()
    gone = tmp_path / "no-ledger"
    spec = make_cluster(
        **kind_cli.cluster_fields(),
        name=name,
        mounts=[{"hostPath": str(gone), "containerPath": "/mnt"}],
    )
    with pytest.raises(UserError) as caught:
        asyncio.run(checked_ensure(spec))
    assert caught.value.message == f"cluster.mounts[0].hostPath: {gone} does not exist"
    assert kind_log.verbs() == [] and node_ids(name) == []


def test_an_existing_cluster_is_only_checked(
    kube_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    spec = make_cluster(provider="existing", context=kube_api.context)
    result = asyncio.run(checked_ensure(spec))
    assert result.actions == () and result.state.api_ready and result.state.problems == ()
    assert result.access == cluster.ClusterAccess(None, kube_api.context)

    elsewhere = make_cluster(provider="existing", context="no-such-context")
    with pytest.raises(UserError, match=r"^cluster\.context: context 'no-such-context' is not in"):
        asyncio.run(checked_ensure(elsewhere))


def test_the_record_kept_in_the_cluster_survives_the_state_folder(
    kind_cli: Any, kind_log: KindLog, state_home: Path
) -> None:
    name = kind_cli.new_name()
    spec = make_cluster(**kind_cli.cluster_fields(), name=name)
    first = asyncio.run(cluster.ensure_cluster(spec))
    assert verbs(list(first.actions)) == [("create-cluster", name)]
    made = cluster.read_record(name)

    async def kept() -> Record | None:
        from laconic_helm.kube import Kube

        access = first.access
        return await cluster.read_cluster_record(Kube.connect(access.kubeconfig, access.context))

    assert asyncio.run(kept()) == made

    # Another user's run, or this host's state folder lost: the cluster itself says it is ours.
    shutil.rmtree(state_home)
    state = asyncio.run(cluster.observe_cluster(spec))
    assert state.owned and state.ownership.endswith("(its record in it)")
    again = asyncio.run(cluster.ensure_cluster(spec))
    assert again.actions == () and again.state.owned
    assert cluster.read_record(name) == made  # restored from the cluster
    assert verbs(asyncio.run(cluster.delete_cluster(spec))) == [("delete-cluster", name)]
