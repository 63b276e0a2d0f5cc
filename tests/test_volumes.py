"""volumes: what status reads of a data volume's free space (measured in the pod by `df`, on
real kind in tests/test_e2e.py), and when it warns."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from laconic_helm.volumes import VolumeSpace, parse_df

pytestmark = pytest.mark.unit


def test_parse_df_reads_this_hosts_df(tmp_path: Path) -> None:
    out = subprocess.run(["df", "-P", "-k", str(tmp_path)], capture_output=True, text=True)
    total, free = parse_df(out.stdout)
    assert 0 < free <= total


def test_busybox_style_output_with_a_long_device_name() -> None:
    text = (
        "Filesystem           1024-blocks    Used Available Capacity Mounted on\n"
        "overlay                 41152736 2236960  36802064   6% /data/ledger\n"
    )
    assert parse_df(text) == (41152736 * 1024, 36802064 * 1024)


@pytest.mark.parametrize("text", ["", "df: /data/ledger: No such file or directory\n"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_df(text)


def test_a_volume_under_a_tenth_free_is_low_and_says_so() -> None:
    gib = 1 << 30
    fine = VolumeSpace("agave-0", "ledger", "/data/ledger", total=100 * gib, free=11 * gib)
    low = VolumeSpace("agave-0", "ledger", "/data/ledger", total=100 * gib, free=9 * gib)
    unknown = VolumeSpace("agave-0", "ledger", "/data/ledger", problem="exec refused")
    assert not fine.low and fine.line().startswith("✓ volume ledger (/data/ledger in agave-0)")
    assert low.low and low.line().startswith("! ") and "under 10% free" in low.line()
    assert low.as_dict()["low"] is True
    assert not unknown.low and "unknown (exec refused)" in unknown.line()
