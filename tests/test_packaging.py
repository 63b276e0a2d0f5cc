"""pyproject.toml declares what the driver needs: `pip install .` on a clean host gets every
module the driver imports, not only what happens to come along with another package."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "driver"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _imported_modules() -> dict[str, Path]:
    """Top-level module -> a file importing it, for every absolute import under driver/."""
    found: dict[str, Path] = {}
    for path in sorted(DRIVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(REPO))
    return found


def test_every_third_party_module_the_driver_imports_is_a_declared_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    distributions = packages_distributions()
    local = {p.name for p in DRIVER.iterdir() if p.is_dir()}
    third_party = {
        module: path
        for module, path in _imported_modules().items()
        if module not in sys.stdlib_module_names and module not in local
    }
    assert {"pyhelm3", "semver", "urllib3", "yaml"} <= set(third_party)
    undeclared = {
        module: f"{path} (distribution {', '.join(distributions.get(module, ['unknown']))})"
        for module, path in third_party.items()
        if not {_normalized(d) for d in distributions.get(module, [])} & declared
    }
    assert not undeclared, f"imported under driver/ but not in [project] dependencies: {undeclared}"


def test_pyhelm3_is_held_below_its_next_minor() -> None:
    """The driver overrides pyhelm3.Command.run and reads its private attributes."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pyhelm3,) = [r for r in project["dependencies"] if _requirement_name(r) == "pyhelm3"]
    lower = re.search(r">=\s*(\d+)\.(\d+)", pyhelm3)
    upper = re.search(r"<\s*(\d+)\.(\d+)$", pyhelm3)
    assert lower and upper, pyhelm3
    major, minor = int(lower.group(1)), int(lower.group(2))
    assert (int(upper.group(1)), int(upper.group(2))) == (major, minor + 1), pyhelm3
