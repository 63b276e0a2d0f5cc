"""One exit-code contract: README's table is what errors.py defines, and every command family
exits with it — 2 for bad input (a spec, file, image or value that is wrong; a missing tool),
4 while another run holds the deployment's lock — with one JSON report under `-o json`, given
before or after the subcommand. Codes 0, 1 and 3 are shown through the real runs of
tests/test_commands.py, test_e2e.py, test_interrupt.py and test_faults.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from laconic_helm import errors, lock
from tests.conftest import REPO

README = REPO / "README.md"


def _readme_table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after `heading` in README.md, as cell lists."""
    text = README.read_text()
    after = text[text.index(heading) :]
    rows = []
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and rule left out


@pytest.mark.unit
def test_readme_exit_code_table_is_the_code_s() -> None:
    table = {int(code): meaning for code, meaning in _readme_table("### Exit codes")}
    defined = {
        getattr(errors, name): name for name in dir(errors) if re.fullmatch(r"EXIT_[A-Z_]+", name)
    }
    assert set(table) == set(defined), (table, defined)
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert {c.exit_code for c in classes if hasattr(c, "exit_code")} <= set(table)
    assert "missing" in table[errors.EXIT_BAD_INPUT] or "host" in table[errors.EXIT_BAD_INPUT]
    assert errors.ToolMissingError.exit_code == errors.EXIT_BAD_INPUT


@pytest.mark.unit
def test_readme_cli_table_lists_every_command() -> None:
    from laconic_helm.cli import main

    documented = " ".join(row[0] for row in _readme_table("## The CLI at a glance"))

    def leaves(group: object, prefix: str = "") -> set[str]:
        found = set()
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                found |= leaves(command, f"{prefix}{name} ")
            else:
                found.add(f"{prefix}{name}")
        return found

    missing = [c for c in sorted(leaves(main)) if not re.search(rf"\b{c}\b", documented)]
    assert not missing, f"commands README's CLI table does not list: {missing}"


def _cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "laconic_helm", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LACONIC_HELM_STATE": str(tmp_path / "state")}


# Each family with input it must refuse before doing anything (the spec's file is missing, no
# such kind cluster, the laconic-so deployment dir does not exist).
BAD_INPUT = {
    "deploy": ("deploy", "--spec", "{missing}"),
    "plan": ("plan", "--spec", "{missing}"),
    "status": ("status", "--spec", "{missing}"),
    "down": ("down", "--spec", "{missing}"),
    "logs": ("logs", "--spec", "{missing}"),
    "images load": ("images", "load", "--cluster", "lh-exit", "sha256:" + "0" * 64),
    "import laconic-so": ("import", "laconic-so", "--dir", "{missing}", "--out", "{out}"),
}


@pytest.mark.unit
@pytest.mark.parametrize("family", sorted(BAD_INPUT))
@pytest.mark.parametrize("where", ["before", "after"])
def test_bad_input_exits_2_with_one_json_report(
    family: str, where: str, env: dict[str, str], tmp_path: Path
) -> None:
    args = [a.format(missing=tmp_path / "absent", out=tmp_path / "out") for a in BAD_INPUT[family]]
    words = len(family.split())
    argv = (
        ["-o", "json", *args] if where == "before" else [*args[:words], "-o", "json", *args[words:]]
    )
    code, report, _ = _cli(*argv, env=env, cwd=tmp_path)
    assert code == 2 and report["exit_code"] == 2 and report["ok"] is False, report
    error = str(report["error"])
    assert error and "\n" not in error
    assert str(tmp_path / "absent") in error or "lh-exit" in error  # names what is wrong
    assert not (tmp_path / "out").exists()


@pytest.fixture
def held_lock(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Deployment lock of the built-in default cluster, held by this process meanwhile."""
    monkeypatch.setenv("LACONIC_HELM_STATE", env["LACONIC_HELM_STATE"])
    from laconic_helm import spec

    name = spec.default_spec().cluster.name
    taken, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with lock.deployment_lock(name, wait=0):
            taken.set()
            await asyncio.to_thread(release.wait)

    holder = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    holder.start()
    assert taken.wait(30)
    yield name
    release.set()
    holder.join(30)


@pytest.mark.docker
@pytest.mark.parametrize(
    "args",
    [("deploy",), ("down",), ("images", "load", "--cluster", "{name}", "busybox:latest")],
    ids=["deploy", "down", "images load"],
)
def test_a_held_lock_exits_4(
    args: tuple[str, ...], held_lock: str, env: dict[str, str], tmp_path: Path
) -> None:
    argv = [a.format(name=held_lock) for a in args]
    code, report, _ = _cli(*argv, "--lock-wait", "0", "-o", "json", env=env, cwd=tmp_path)
    assert code == 4 and report["exit_code"] == 4, report
    assert "holds the lock" in str(report["error"])
