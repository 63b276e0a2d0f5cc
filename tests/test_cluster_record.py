"""Tests of cluster/record.py: the ownership record, its file, and judging by it (`unit`)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from laconic_helm import paths
from laconic_helm.cluster import record
from laconic_helm.cluster.nodes import Node
from laconic_helm.cluster.record import Record
from tests.cluster_support import T0, make_node, make_record, private_state


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_state(tmp_path, monkeypatch)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rec", "nodes", "owned", "words"),
    [
        (None, [make_node()], False, "no record"),
        (make_record("creating", ()), [make_node()], True, "began creating"),
        (make_record("creating", ()), [make_node(created=T0 - timedelta(seconds=1))], False,
         "predate"),
        (make_record(), [make_node()], True, "created it"),
        (make_record("adopted"), [make_node()], True, "adopted it"),
        (make_record(ids=("id-cp", "id-w")), [make_node()], True, "created it"),
        (make_record(), [make_node(id="id-other")], False, "re-made by something else"),
        (make_record(), [make_node(), make_node("lh-worker", id="id-w", role="worker")], False,
         "re-made"),
    ],
)  # fmt: skip
def test_ownership(rec: Record | None, nodes: list[Node], owned: bool, words: str) -> None:
    got, why = record.judge_ownership(rec, nodes)
    assert got is owned
    assert words in why


@pytest.mark.unit
def test_record_round_trip_is_private(state_home: Path) -> None:
    rec = Record("lh", "created", T0.isoformat(), ("id-cp",), "abc")
    record.write_record(rec)
    assert record.read_record("lh") == rec
    path = record.record_path("lh")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert record.read_record("absent") is None


@pytest.mark.unit
def test_damaged_record_proves_nothing(state_home: Path) -> None:
    path = record.record_path("lh")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert record.read_record("lh") is None


@pytest.mark.unit
@pytest.mark.skipif(os.geteuid() != 0, reason="the system location is root's")
def test_root_moves_its_per_user_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "xdg" / "laconic-helm" / "clusters" / "lh"
    old.mkdir(parents=True)
    (old / "record.json").write_text("{}")
    (old / "kubeconfig").write_text("k")
    (old / paths.MEMLOCK_SPEC_NAME).write_text("spec")
    monkeypatch.delenv("LACONIC_HELM_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(paths, "SYSTEM_STATE", tmp_path / "var-lib")

    assert paths.state_dir() == tmp_path / "var-lib"
    new = tmp_path / "var-lib" / "clusters" / "lh"
    assert sorted(p.name for p in new.iterdir()) == sorted(
        ["kubeconfig", "record.json", paths.MEMLOCK_SPEC_NAME]
    )
    # The node created then mounts the spec from the old folder: it stays there too.
    assert [p.name for p in old.iterdir()] == [paths.MEMLOCK_SPEC_NAME]
    assert f"moved the records of cluster lh from {old}" in caplog.text
    caplog.clear()
    paths.state_dir()
    assert "moved" not in caplog.text
