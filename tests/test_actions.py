"""actions: one vocabulary of change, documented once, that every step plans in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from laconic_helm import actions
from laconic_helm.actions import NO_CHANGE, VERBS, Action

pytestmark = pytest.mark.unit

DRIVER = Path(actions.__file__).parent


def _verbs_in_code() -> set[str]:
    """Every verb a driver module writes as a literal where an Action is made or tested."""
    found: set[str] = set()
    for path in DRIVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Action":
                verb = node.args[1] if len(node.args) > 1 else None
                if isinstance(verb, ast.Constant) and isinstance(verb.value, str):
                    found.add(verb.value)
    return found


def test_every_verb_the_driver_plans_is_documented() -> None:
    used = _verbs_in_code()
    assert used, "no Action(...) with a literal verb found: the scan is broken"
    assert used <= set(VERBS), used - set(VERBS)
    assert all(VERBS[v] for v in VERBS)  # each has its meaning in words


def test_an_undocumented_verb_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown action verb 'create-object'"):
        Action("release/x", "create-object", "ConfigMap a/b")


def test_no_change_verbs_are_reported_but_change_nothing() -> None:
    assert set(VERBS) >= NO_CHANGE
    assert not Action("release/x", "up-to-date", "a/x").changes
    assert Action("release/x", "upgrade-release", "a/x", "install").changes
    assert Action("images", "load-image", "me/a:1", "on n1").line() == (
        "images: load-image me/a:1 (on n1)"
    )
