"""Prints the fault-injection figures after a run that had `faults` tests (registered by
tests/conftest.py through pytest_plugins):

    fault-injection: <tried> tried, <converged> converged, <failed> failed

A trial is tried once it runs (a failing setup counts as tried and failed), converged when it
passes; skipped trials are not tried.
"""

from __future__ import annotations

import pytest

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "faults" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        _outcomes[report.nodeid] = "converged" if report.passed else "failed"
    elif report.failed:  # a teardown failure spoils a trial that passed
        _outcomes[report.nodeid] = "failed"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _outcomes:
        return
    converged = sum(o == "converged" for o in _outcomes.values())
    failed = len(_outcomes) - converged
    terminalreporter.write_line(
        f"fault-injection: {len(_outcomes)} tried, {converged} converged, {failed} failed",
        red=bool(failed),
        green=not failed,
    )
