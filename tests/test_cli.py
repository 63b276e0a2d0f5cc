"""The command line's contract: help is instant, version prints, usage errors exit 2, `init`
writes the spec to edit and never over one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from laconic_helm import __version__, spec
from laconic_helm.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"], catch_exceptions=False)
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_does_not_import_heavy_modules() -> None:
    probe = (
        "import sys; from laconic_helm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('kubernetes', 'pyhelm3', 'rich', 'pydantic') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "heavy="


def test_images_load_does_not_import_heavy_modules() -> None:
    # A re-run of `images load` with everything present should cost little more than start-up.
    probe = (
        "import sys, laconic_helm.cli, laconic_helm.loading\n"
        "heavy = ('kubernetes', 'pyhelm3', 'rich', 'pydantic', 'yaml')\n"
        "print('heavy=' + ','.join(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "heavy="


def test_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--no-such-flag"])
    assert result.exit_code == 2


def test_init_writes_the_commented_default_spec_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    written = tmp_path / "deployment.yaml"
    assert written.read_text() == (REPO / "examples" / "deployment.yaml").read_text()
    # Its builtin: charts and overlays resolve from any folder: it deploys the built-in default.
    assert spec.load_spec(written).model_dump() == spec.default_spec().model_dump()

    written.write_text("cluster: {name: mine}\n")
    refused = CliRunner().invoke(main, ["init"])
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[-1] == (
        "error: deployment.yaml: already exists; edit it or pass another --out"
    )
    assert written.read_text() == "cluster: {name: mine}\n"


def test_init_reports_the_file_it_writes_in_json(tmp_path: Path) -> None:
    out = tmp_path / "lab.yaml"
    done = CliRunner().invoke(main, ["--output", "json", "init", "--out", str(out)])
    report = json.loads(done.stdout)
    assert (done.exit_code, report["ok"], report["changed"]) == (0, True, True)
    assert Path(report["spec"]) == out.resolve() and out.is_file()

    again = CliRunner().invoke(main, ["--output", "json", "init", "--out", str(out)])
    report = json.loads(again.stdout)
    assert (again.exit_code, report["ok"], report["changed"]) == (2, False, False)
    assert report["error"] == f"{out}: already exists; edit it or pass another --out"
