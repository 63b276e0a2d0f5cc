"""The import's findings: what became of each part of the deployment dir that has no exact
equivalent, so nothing is dropped in silence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FindingKind = Literal["unmapped", "changed", "assumed", "ignored"]
FINDING_ORDER = ("unmapped", "changed", "assumed", "ignored")  # what needs a decision first
# unmapped: had an effect under laconic-so and has no equivalent here: the operator decides.
# changed: carried over, but it behaves differently now (the finding says how).
# assumed: a guess the files cannot settle; the finding says how to check it.
# ignored: had no effect under laconic-so either, so nothing is lost.


@dataclass(frozen=True)
class Finding:
    """One line of the report: where in the deployment dir, and what became of it."""

    kind: FindingKind
    where: str
    what: str

    def line(self) -> str:
        return f"{self.kind:<8} {self.where}: {self.what}"


@dataclass
class Findings:
    """The findings so far, each once and in the order found (the report sorts them by kind)."""

    items: list[Finding] = field(default_factory=list)

    def add(self, kind: FindingKind, where: str, what: str) -> None:
        finding = Finding(kind, where, what)
        if finding not in self.items:
            self.items.append(finding)
