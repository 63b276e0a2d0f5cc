"""The last step: a JSON-RPC call through the ingress, as a user of the node would make it.

The result is reported, never fatal: a node that is still catching up answers `behind`, and
that is news for the operator, not a failed deploy.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT = 10.0


@dataclass(frozen=True)
class Probe:
    """What one RPC call through the ingress returned."""

    url: str
    host: str | None
    ok: bool
    detail: str
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The step record's data (its detail is the step's own)."""
        return {"url": self.url, "host": self.host, "ok": self.ok, "version": self.version}


def _call(url: str, host: str | None, method: str) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode()
    headers = {"Content-Type": "application/json"}
    if host:
        headers["Host"] = host
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return dict(json.loads(response.read()))


def _probe(url: str, host: str | None) -> Probe:
    try:
        health = _call(url, host, "getHealth")
        version = _call(url, host, "getVersion").get("result", {}).get("solana-core")
    except urllib.error.HTTPError as exc:
        return Probe(url, host, False, f"HTTP {exc.code} from the ingress")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(url, host, False, f"unreachable ({reason})")
    except (ValueError, AttributeError):
        return Probe(url, host, False, "the answer is not JSON-RPC")
    if "result" in health:
        return Probe(url, host, health["result"] == "ok", f"getHealth: {health['result']}", version)
    message = health.get("error", {}).get("message", "error")
    return Probe(url, host, False, f"getHealth: {message}", version)


# What an ingress answers while it has not taken the new route in (it applies its config a few
# seconds after the workload is ready): worth asking again for a short while.
_SETTLING = ("HTTP 404", "HTTP 502", "HTTP 503", "HTTP 504", "unreachable")


async def probe_rpc(url: str, host: str | None, *, settle: float = 30.0) -> Probe:
    """Calls getHealth and getVersion at `url` (with `host` as the Host header), asking again
    for up to `settle` seconds while the ingress has no working route to the node yet."""
    deadline = asyncio.get_running_loop().time() + settle
    while True:
        probe = await asyncio.to_thread(_probe, url, host)
        if not probe.detail.startswith(_SETTLING):
            return probe
        if asyncio.get_running_loop().time() >= deadline:
            return probe
        await asyncio.sleep(1.0)
