"""What the operator sees: a step list with timings on stderr, progress bars on a terminal, plain
lines under ansible or CI, and one JSON document on stdout with `--output json`."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from laconic_helm.actions import Action
    from laconic_helm.cluster import ClusterState

OutputMode = Literal["human", "json"]
StepStatus = Literal["ok", "changed", "skipped", "warning", "failed"]

_MARKS = {"ok": "✓", "changed": "✓", "skipped": "-", "warning": "!", "failed": "✗"}
_PLAIN_PROGRESS_EVERY = 5.0  # seconds between plain progress lines


@dataclass
class StepRecord:
    """One step's outcome; the same record feeds the human lines and the JSON report."""

    name: str
    status: StepStatus = "failed"  # a step that never finishes stays failed
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def done(self, status: StepStatus = "ok", detail: str = "", **data: Any) -> None:
        self.status = status
        if detail:
            self.detail = detail
        self.data.update(data)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Byte progress of one transfer: a rich bar on a terminal, a plain line every few seconds."""

    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self._reporter = reporter
        self.label = label
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._last_line = self._start
        self._task: Any = None
        if reporter.rich_progress is not None:
            self._task = reporter.rich_progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self.done += n
        if self._task is not None:
            self._reporter.rich_progress.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last_line >= _PLAIN_PROGRESS_EVERY:
            self._last_line = now
            self._reporter.line(self.summary())

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        return (
            f"  {self.label}: {human_bytes(self.done)} / {human_bytes(self.total)}"
            f" ({human_bytes(rate)}/s, ETA {eta:.0f} s)"
        )

    def close(self) -> None:
        if self._task is not None:
            self._reporter.rich_progress.remove_task(self._task)


class Reporter:
    """Collects step records and renders them for a person or for ansible."""

    def __init__(self, mode: OutputMode = "human", *, stream: IO[str] | None = None) -> None:
        self.mode = mode
        self.stream = stream or sys.stderr
        self.steps: list[StepRecord] = []
        self.tty = mode == "human" and self.stream.isatty()
        self.rich_progress: Any = None

    def line(self, text: str) -> None:
        """Prints a human line to stderr (also under --output json: stdout stays pure JSON)."""
        print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        """Times a step; it is recorded as failed unless the block marks it and completes."""
        record = StepRecord(name)
        self.steps.append(record)
        start = time.monotonic()
        if self.tty:
            self.line(f"▸ {name}")
        try:
            yield record
            if record.status == "failed":
                record.status = "ok"
        except BaseException:
            record.status = "failed"
            raise
        finally:
            record.seconds = round(time.monotonic() - start, 3)
            detail = f": {record.detail}" if record.detail else ""
            self.line(f"{_MARKS[record.status]} {name}{detail} ({record.seconds:.1f} s)")

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Progress]:
        """Shows byte progress for one transfer while the block runs."""
        if self.tty and self.rich_progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self.rich_progress = RichProgress(
                TextColumn("  {task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self.rich_progress.start()
        bar = Progress(self, label, total)
        try:
            yield bar
        finally:
            bar.close()
            if self.rich_progress is not None and not self.rich_progress.tasks:
                self.rich_progress.stop()
                self.rich_progress = None

    @property
    def changed(self) -> bool:
        return any(s.status == "changed" for s in self.steps)

    def report(self, *, ok: bool, exit_code: int, error: str | None = None, **extra: Any) -> None:
        """Emits the final report: one JSON object on stdout, or a closing human line."""
        if self.mode == "json":
            doc = {
                "ok": ok,
                "changed": self.changed,
                "exit_code": exit_code,
                "error": error,
                "steps": [asdict(s) for s in self.steps],
                **extra,
            }
            sys.stdout.write(json.dumps(doc, indent=None, sort_keys=False) + "\n")
            sys.stdout.flush()
        elif error:
            self.line(f"error: {error}")


# -- what `plan` and `status` show ------------------------------------------------------------


def plan_lines(
    actions: Sequence[Action], effects: Sequence[str], reporter: Reporter
) -> list[Action]:
    """Shows the planned actions (an up-to-date release is not news), then what the upgrades
    will do to each object; returns the actions shown, as the JSON report lists them."""
    shown = [a for a in actions if a.verb != "up-to-date"]
    for action in shown:
        reporter.line(action.line())
    if not shown:
        reporter.line("nothing to do: the deployment matches the spec")
    for effect in effects:
        reporter.line(f"  {effect}")
    return shown


def cluster_line(state: ClusterState, *, kind: bool) -> str:
    if kind and not state.exists:
        return f"✗ cluster {state.name}: does not exist (`laconic-helm deploy` creates it)"
    problems = f"; {'; '.join(state.problems)}" if state.problems else ""
    return (
        f"{'✗' if state.problems else '✓'} cluster {state.name}: {len(state.nodes)} nodes, "
        f"API {'ready' if state.api_ready else 'not answering'}{problems}"
    )


def image_lines(found: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One line per image and node: present (`up-to-date`), or what a deploy would do."""
    return [
        f"{'✓' if how == 'up-to-date' else '✗'} image {ref} on {node}: {how}"
        for ref, nodes in found.items()
        for node, how in nodes.items()
    ]


def release_line(name: str, summary: Mapping[str, Any]) -> str:
    workloads = summary["workloads"]
    ready = sum(workloads.values())
    return (
        f"{'✓' if summary['status'] == 'deployed' else '✗'} release {name}: "
        f"{summary['status']} rev {summary['revision']}, "
        f"{ready}/{len(workloads)} workloads ready"
    )
