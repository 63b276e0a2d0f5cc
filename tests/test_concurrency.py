"""Two deploys of the same deployment started together: one proceeds; the other waits for the
lock and then finds nothing left to do (exit 0), or, told not to wait (`--lock-wait 0`), exits 4
with the lock message. Never a traceback, never exit 1, never a release left pending.

20 pairs run against the session's converged deployment (neither has anything to do, so the
pair writes nothing at all), and 3 pairs with work to do (agave's values changed, so the run
holding the lock really upgrades while the other waits). The full set, 20 pairs with work:

    LACONIC_HELM_FAULTS=full python -m pytest tests/test_concurrency.py
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.harness import deployment_under_test as dep
from tests.harness.session_deployment import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.apiserver]

PAIRS = 20
PAIRS_WITH_WORK = PAIRS if os.environ.get("LACONIC_HELM_FAULTS") == "full" else 3
LOCK_MESSAGE = "another laconic-helm run (pid"


def _together(deployment: dep.Deployment, *args: str) -> list[dep.Run]:
    """Starts two `deploy` runs back to back and waits for both."""
    argv = deployment.argv("deploy", *args)
    started = [
        subprocess.Popen(
            argv, env=deployment.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    runs = []
    for process in started:
        out, err = process.communicate(timeout=600)
        report = json.loads(out) if out.strip() else {}
        runs.append(dep.Run(process.returncode, report, out, err))
    return runs


def _clean(runs: list[dep.Run], *, waited: bool) -> None:
    """Checks that the pair ended cleanly: both converged, or one and the lock message."""
    for run in runs:
        assert "Traceback" not in run.stderr, run.stderr
        assert run.report, f"no report (exit {run.code}): {run.stderr}"
    codes = sorted(r.code for r in runs)
    assert codes in ([0, 0], [0, 4]), f"exit codes {codes}: {[r.error for r in runs]}"
    if codes == [0, 4]:
        assert not waited, "a run that may wait 60 s gave up on the lock"
        loser = next(r for r in runs if r.code == 4)
        assert LOCK_MESSAGE in loser.error and "holds the lock" in loser.error, loser.error
        assert "\n" not in loser.error


def _no_release_pending(deployed: Deployed) -> dict[str, list[str]]:
    found = {}
    for name, ns in (("caddy-ingress", dep.CADDY_NAMESPACE), ("agave", dep.AGAVE_NAMESPACE)):
        statuses = dep.release_statuses(deployed.api, ns, name)
        assert statuses[-1] == "deployed", f"{name}: {statuses}"
        assert not [s for s in statuses if s.startswith("pending")], f"{name}: {statuses}"
        found[name] = statuses
    return found


def _lock_args(pair: int) -> tuple[tuple[str, ...], bool]:
    """One pair in four waits for the lock (the default 60 s); the others are told not to wait
    (`--lock-wait 0`), so the pair that loses the race shows the lock message."""
    return ((), True) if pair % 4 == 0 else (("--lock-wait", "0"), False)


@pytest.mark.parametrize("pair", range(PAIRS))
def test_two_deploys_with_nothing_to_do(
    deployed: Deployed, pair: int, record_property: Callable[[str, object], None]
) -> None:
    args, waited = _lock_args(pair)
    before = _no_release_pending(deployed)
    mark = deployed.api.mark()
    runs = _together(deployed.deployment, *args)
    record_property("exit_codes", sorted(r.code for r in runs))
    _clean(runs, waited=waited)
    assert not any(r.report["changed"] for r in runs if r.code == 0)
    assert deployed.api.writes_since(mark) == []
    assert _no_release_pending(deployed) == before


@pytest.mark.parametrize("pair", range(PAIRS_WITH_WORK))
def test_two_deploys_with_an_upgrade_to_do(
    deployed: Deployed,
    pair: int,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    doc = yaml.safe_load(deployed.deployment.spec.read_text())
    changed = copy.deepcopy(doc)
    agave = next(r for r in changed["releases"] if r["name"] == "agave")
    agave["values"]["podLabels"] = {"laconic-helm.test/pair": f"{pair}-{os.getpid()}"}
    deployment = dep.Deployment(
        dep.write_spec(tmp_path, changed), deployed.cluster, deployed.deployment.env
    )
    args, waited = _lock_args(pair)
    before = _no_release_pending(deployed)["agave"]
    runs = _together(deployment, *args)
    record_property("exit_codes", sorted(r.code for r in runs))
    _clean(runs, waited=waited)
    changed = sorted(r.report["changed"] for r in runs if r.code == 0)
    assert changed in ([True], [False, True]), "exactly one run upgrades; a waiter finds it done"
    after = _no_release_pending(deployed)["agave"]
    assert len(after) == len(before) + 1, f"{before} -> {after}: one upgrade, not two"
