"""The shared vocabulary of change: every step observes, then plans `Action`s, then acts.

`plan`, the step lines, logs and the JSON report all speak in these actions, so what the
operator is shown is exactly what will be (or was) done. Planning is pure; acting re-checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Action:
    """One change to the world, named so a person can read it and a test can target it.

    `step` groups actions (cluster, images, release/<name>); `verb` says what happens
    (e.g. create-cluster, unlock-release, uninstall-release, adopt-object,
    apply-secret, wait-restart-window, upgrade-release); `target` names the object.
    """

    step: str
    verb: str
    target: str
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.step}: {self.verb} {self.target}{detail}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
