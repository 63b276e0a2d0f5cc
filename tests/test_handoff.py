"""Streams handed to a node through a FIFO in the folder it mounts (handoff.py), on stand-in
nodes of real containerd: the FIFO is used when the node can read it, leaves nothing behind,
and a node that cannot read it is streamed to through `docker exec -i` instead."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from laconic_helm import handoff, images
from tests.harness import nodes
from tests.harness.imagebuild import Builder

MiB = 1 << 20
THROUGH_FIFO = f"images import --snapshotter overlayfs {handoff.IN_NODE}/"
THROUGH_STDIN = "exec -i"


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A one-node cluster whose node mounts a transfer folder, as the driver's kind config
    makes it; yields the cluster and the host folder."""
    folder = tmp_path / "transfer"
    folder.mkdir(mode=0o700)
    name = f"lh-hand-{uuid.uuid4().hex[:8]}"
    try:
        nodes.create_cluster(name, nodes.transfer_node_specs(name, folder))
        yield name, folder
    finally:
        nodes.delete_cluster(name)


def _load(cluster: str, ref: str) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "laconic_helm", "-v", "images", "load", "--cluster", cluster, ref]
    done = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.docker
def test_a_node_that_mounts_the_folder_reads_the_stream_from_a_fifo(
    builder: Builder, mounted: tuple[str, Path]
) -> None:
    cluster, folder = mounted
    ref = builder.build("a:1", {"base": os.urandom(8 * MiB), "top": os.urandom(MiB)})
    done = _load(cluster, ref)
    assert THROUGH_FIFO in done.stderr and THROUGH_STDIN not in done.stderr
    assert images.containerd_name(ref) in nodes.ctr_images(f"{cluster}-control-plane")
    assert list(folder.iterdir()) == []  # the FIFO's name went once both ends were open


@pytest.mark.docker
def test_a_folder_made_again_after_the_node_mounted_it_means_exec(
    builder: Builder, mounted: tuple[str, Path]
) -> None:
    """The node still sees the folder it mounted, so a FIFO made in the new one is not there
    for it: its `ctr` fails to open it, and the stream goes through exec's stdin."""
    cluster, folder = mounted
    folder.rename(folder.with_name("old-transfer"))
    folder.mkdir(mode=0o700)
    ref = builder.build("a:1", {"f": os.urandom(2 * MiB)})
    done = _load(cluster, ref)
    assert THROUGH_FIFO in done.stderr and THROUGH_STDIN in done.stderr
    assert "does not read the transfer folder (" in done.stderr
    assert "no such file or directory): streaming through exec" in done.stderr
    assert images.containerd_name(ref) in nodes.ctr_images(f"{cluster}-control-plane")
    assert list(folder.iterdir()) == []


@pytest.mark.docker
def test_a_node_without_the_mount_is_streamed_to_through_exec(builder: Builder) -> None:
    name = f"lh-hand-{uuid.uuid4().hex[:8]}"
    try:
        nodes.create_cluster(name)
        ref = builder.build("a:1", {"f": os.urandom(MiB)})
        done = _load(name, ref)
        assert THROUGH_STDIN in done.stderr and THROUGH_FIFO not in done.stderr
        assert images.containerd_name(ref) in nodes.ctr_images(f"{name}-control-plane")
    finally:
        nodes.delete_cluster(name)


@pytest.mark.unit
def test_fifos_of_dead_runs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for pid in (dead, str(os.getpid())):
        os.mkfifo(tmp_path / f"{pid}-0a1b2c.fifo")
    (tmp_path / "notes.txt").write_text("not ours")
    handoff.sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}-0a1b2c.fifo", "notes.txt"]
