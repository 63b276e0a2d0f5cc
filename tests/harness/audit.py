"""The API server's audit log, read as "which writes did the code under test make since a mark".

The audit policy (controlplane.AUDIT_POLICY) records every create/update/patch/delete with its
metadata, except those of the control plane's own components and of the harness. Before reading,
a barrier request with a known Audit-ID is sent and awaited in the log, so no event of a request
that finished earlier can still be on its way to the file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tests.harness import waits
from tests.harness.client import Client


@dataclass(frozen=True)
class Write:
    """One write request as the API server saw it."""

    verb: str
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    user: str
    code: int
    uri: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        sub = f"/{self.subresource}" if self.subresource else ""
        target = f"{self.resource}{sub} {where}{self.name or ''}"
        return f"{self.verb} {target} -> {self.code} ({self.user})"


class AuditLog:
    """Reads one API server's audit log through `read_from(offset) -> bytes after offset`."""

    def __init__(self, harness: Client, read_from: Callable[[int], bytes]) -> None:
        self._harness = harness
        self._read_from = read_from
        self._seen = 0  # the log only grows: a barrier need not read what came before this

    def _barrier(self, ceiling: float = waits.CEILING) -> int:
        """Returns the log size once a fresh barrier event is in it."""
        audit_id = str(uuid.uuid4())
        self._harness.request("GET", "/version", headers={"Audit-ID": audit_id})
        needle = audit_id.encode()

        def reached() -> bool:
            data = self._read_from(self._seen)
            complete = data[: data.rfind(b"\n") + 1]  # a concurrent event may be half-written
            if needle not in complete:
                return False
            self._seen += len(complete)
            return True

        waits.wait_until(reached, f"audit barrier {audit_id} to reach the log", ceiling, 0.05)
        return self._seen

    def mark(self) -> int:
        """A position in the log; pass it to writes_since."""
        return self._barrier()

    def writes_since(self, mark: int) -> list[Write]:
        """Write requests (successful or refused) logged after `mark`, oldest first."""
        end = self._barrier()
        writes = []
        for line in self._read_from(mark)[: end - mark].splitlines():
            event = json.loads(line)
            ref = event.get("objectRef")
            if ref is None or event.get("stage") != "ResponseComplete":
                continue
            writes.append(
                Write(
                    verb=event["verb"],
                    resource=ref.get("resource", ""),
                    namespace=ref.get("namespace"),
                    name=ref.get("name"),
                    subresource=ref.get("subresource"),
                    user=event["user"]["username"],
                    code=int(event.get("responseStatus", {}).get("code", 0)),
                    uri=event["requestURI"],
                )
            )
        return writes
