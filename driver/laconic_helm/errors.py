"""The one exception hierarchy; each class carries the exit code `cli.py` turns it into.

Exit codes (README's table): 0 converged, 1 failed, 2 bad input or a host not as required (a
missing tool too; nothing changed), 3 partial progress (deadline or interrupted: re-run to
continue), 4 another run holds the lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3
EXIT_LOCKED = 4


class LaconicHelmError(Exception):
    """Base of every error the driver raises on purpose; never shown with a traceback.

    A subclass names its exit code in its class line (`exit_code=...`), else inherits it."""

    exit_code = EXIT_FAILED

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(LaconicHelmError, exit_code=EXIT_BAD_INPUT):
    """The operator's input is wrong; raised before any side effect."""


class SpecError(UserError):
    """The deployment spec or a file it names is invalid; the message names file and key."""


class ToolMissingError(LaconicHelmError, exit_code=EXIT_BAD_INPUT):
    """A required external tool is absent or unusable: the host is not as required."""


class CommandError(LaconicHelmError):
    """An external command failed; keeps the redacted argv and the tail of its output."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(f"{self.argv[0]} exited with {returncode}: {tail}")


class ClusterError(LaconicHelmError):
    """The cluster is absent, unhealthy or incompatible with the spec."""


class ImageLoadError(LaconicHelmError):
    """Loading an image into a node failed."""


class ReleaseError(LaconicHelmError):
    """A Helm release could not be brought to the desired state."""

    def __init__(self, release: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"release {release}: {message}", hint=hint)
        self.release = release


class Interrupted(LaconicHelmError, exit_code=EXIT_PARTIAL):
    """The run stopped early (signal or deadline); everything done so far is kept."""


class DeadlineExceeded(Interrupted):
    """The --deadline budget ran out before the work was done."""


class LockHeld(LaconicHelmError, exit_code=EXIT_LOCKED):
    """Another run holds this deployment's lock."""
