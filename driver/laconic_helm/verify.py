"""JSON-RPC calls through the ingress, as a user of the node would make them: the deploy's last
step (is the node served?) and the node's own health in `status` (slot, lag, version, identity).

The result is reported, never fatal: a node that is still catching up answers `behind`, and
that is news for the operator, not a failed deploy.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

TIMEOUT = 10.0
_NODE_METHODS = ("getSlot", "getMaxShredInsertSlot", "getVersion", "getIdentity")


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
    node = _read_health(url, host, ("getVersion",))  # two calls: the deploy's last step
    if not node.reachable:
        return Probe(url, host, False, node.health)
    return Probe(url, host, node.health == "ok", f"getHealth: {node.health}", node.version)


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


@dataclass(frozen=True)
class NodeHealth:
    """The node's own view of itself, read through its RPC: what `status` shows beside the
    Kubernetes readiness (a pod can be ready while the node falls behind, and the reverse)."""

    url: str
    host: str | None
    reachable: bool
    health: str  # "ok", agave's reason when not ("behind by N slots"), or why unreachable
    slot: int | None = None  # processed slot
    shred_slot: int | None = None  # highest slot the node has shreds for
    version: str | None = None
    identity: str | None = None

    @property
    def lag(self) -> int | None:
        if self.slot is None or self.shred_slot is None:
            return None
        return max(self.shred_slot - self.slot, 0)

    def as_dict(self) -> dict[str, Any]:
        """The fields as `status` reports them (camelCase, as the RPC names them), with lag."""
        doc = asdict(self)
        doc["shredSlot"] = doc.pop("shred_slot")
        return {**doc, "lag": self.lag}

    def line(self, release: str) -> str:
        if not self.reachable:
            return f"✗ node {release}: RPC {self.health}"
        mark = "✓" if self.health == "ok" else "!"
        return (
            f"{mark} node {release}: {self.health}, slot {self.slot}, shreds to "
            f"{self.shred_slot} (lag {self.lag}), version {self.version}, "
            f"identity {self.identity}"
        )


def _number(answer: dict[str, Any]) -> int | None:
    result = answer.get("result")
    return result if isinstance(result, int) else None


def _text(answer: dict[str, Any], key: str) -> str | None:
    result = answer.get("result")
    return str(result[key]) if isinstance(result, dict) and key in result else None


def _read_health(
    url: str, host: str | None, methods: tuple[str, ...] = _NODE_METHODS
) -> NodeHealth:
    """getHealth, then `methods`; what is not asked for stays unknown."""
    try:
        health = _call(url, host, "getHealth")
        answers = {m: _call(url, host, m) for m in methods}
    except urllib.error.HTTPError as exc:
        return NodeHealth(url, host, False, f"HTTP {exc.code} from the ingress")
    except (urllib.error.URLError, OSError) as exc:
        return NodeHealth(url, host, False, f"unreachable ({getattr(exc, 'reason', exc)})")
    except (ValueError, AttributeError):
        return NodeHealth(url, host, False, "the answer is not JSON-RPC")
    state = health.get("result") or health.get("error", {}).get("message", "error")
    return NodeHealth(
        url,
        host,
        True,
        str(state),
        slot=_number(answers.get("getSlot", {})),
        shred_slot=_number(answers.get("getMaxShredInsertSlot", {})),
        version=_text(answers.get("getVersion", {}), "solana-core"),
        identity=_text(answers.get("getIdentity", {}), "identity"),
    )


async def read_health(url: str, host: str | None) -> NodeHealth:
    """Reads health, slots, version and identity at `url`; an unreachable node is reported in
    the result, never raised (status shows it)."""
    return await asyncio.to_thread(_read_health, url, host)
