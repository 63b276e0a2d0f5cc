"""The command line's contract: help is instant, version prints, usage errors exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from laconic_helm import __version__
from laconic_helm.cli import main

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


def test_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--no-such-flag"])
    assert result.exit_code == 2
