"""The agave container's environment as laconic-so gave it, sorted into the agave flags the
image's entrypoint built from it, variables passed on to agave, and findings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from laconic_helm.errors import UserError
from laconic_helm.importer.findings import Findings
from laconic_helm.importer.reading import Service, SoDeployment

# SOLANA_METRICS_CONFIG carries the InfluxDB password: it becomes a Secret made from a private
# file beside the spec, never a value (the chart refuses it as a plain env value).
METRICS_ENV = "SOLANA_METRICS_CONFIG"
MIN_PORT_RANGE = 26  # agave >= 4.1 refuses a narrower dynamic port range; the chart checks it
# The image's entrypoint turned these into agave flags; here they become chart values and flags.
MAPPED_ENV = frozenset(
    {
        "AGAVE_MODE", "VALIDATOR_ENTRYPOINT", "KNOWN_VALIDATOR", "EXTRA_ENTRYPOINTS",
        "EXTRA_KNOWN_VALIDATORS", "RPC_PORT", "RPC_BIND_ADDRESS", "GOSSIP_PORT",
        "DYNAMIC_PORT_RANGE", "EXPECTED_GENESIS_HASH", "EXPECTED_SHRED_VERSION",
        "LIMIT_LEDGER_SIZE", "NO_SNAPSHOTS", "SNAPSHOT_INTERVAL_SLOTS",
        "MAXIMUM_SNAPSHOTS_TO_RETAIN", "NO_INCREMENTAL_SNAPSHOTS", "ACCOUNT_INDEXES",
        "BIND_ADDRESS", "PUBLIC_RPC_ADDRESS", "VOTE_ACCOUNT_KEYPAIR", "EXTRA_ARGS", "JITO_ENABLE",
    }
)  # fmt: skip
# Jito flags, which the entrypoint added only with JITO_ENABLE=true (the relayer: validator only).
JITO_FLAGS = {
    "JITO_TIP_PAYMENT_PROGRAM": "tip-payment-program-pubkey",
    "JITO_DISTRIBUTION_PROGRAM": "tip-distribution-program-pubkey",
    "JITO_MERKLE_ROOT_AUTHORITY": "merkle-root-upload-authority",
    "JITO_COMMISSION_BPS": "commission-bps",
    "JITO_BLOCK_ENGINE_URL": "block-engine-url",
    "JITO_SHRED_RECEIVER_ADDR": "shred-receiver-address",
    "JITO_RELAYER_URL": "relayer-url",
}
_DOWNLOAD = "the entrypoint's snapshot download (aria2c) before agave starts"
_LEAPFROG = "the entrypoint's restart with a fresh snapshot when the node falls behind"
_TEST_SCRIPT = "the test mode's start-test.sh"
# Read by the entrypoint's own machinery, which no longer runs: the chart starts agave directly.
ENTRYPOINT_ONLY_ENV = {
    "SNAPSHOT_AUTO_DOWNLOAD": _DOWNLOAD,
    "SNAPSHOT_MAX_AGE_SLOTS": _DOWNLOAD,
    "SNAPSHOT_CONVERGENCE_SLOTS": _DOWNLOAD,
    "SNAPSHOT_RETRY_DELAY": _DOWNLOAD,
    "SNAPSHOT_LEAPFROG_SLOTS": _LEAPFROG,
    "SNAPSHOT_LEAPFROG_CHECKS": _LEAPFROG,
    "SNAPSHOT_MONITOR_INTERVAL": _LEAPFROG,
    "SNAPSHOT_MONITOR_GRACE": _LEAPFROG,
    "SKIP_IP_ECHO_PREFLIGHT": "the entrypoint's ip-echo preflight check",
    "FACILITATOR_PUBKEY": _TEST_SCRIPT,
    "SERVER_PUBKEY": _TEST_SCRIPT,
    "CLIENT_PUBKEY": _TEST_SCRIPT,
    "MINT_DECIMALS": _TEST_SCRIPT,
    "MINT_AMOUNT": _TEST_SCRIPT,
}
# Variables nothing read under laconic-so, and why.
_HEALTHCHECK = "read by the compose healthcheck only, which laconic-so never made a probe"
INERT_ENV = {
    "PROBE_GRACE_SECONDS": _HEALTHCHECK,
    "PROBE_MAX_SLOT_LAG": _HEALTHCHECK,
    "PUBLIC_TVU_ADDRESS": "the entrypoint never reads it",
}
# agave-validator reads these itself; they go into the chart's `env`.
AGAVE_ENV_PREFIXES = ("RUST_", "SOLANA_")
_WHOLE_VAR = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?\}$")


def env_keys(service: Service) -> list[str]:
    """The variables a service names in compose, values left unread (either compose syntax)."""
    raw = service.doc.get("environment")
    if isinstance(raw, Mapping):
        return [str(k) for k in raw]
    if isinstance(raw, list):
        return [str(item).partition("=")[0] for item in raw]
    return []


def _expand(value: str, env: Mapping[str, str]) -> str:
    """laconic-so's expansion: a whole-value `${VAR}`, `${VAR:-d}` or `${VAR-d}` from config.env."""
    match = _WHOLE_VAR.match(value)
    if match is None:
        return value
    name, op, default = match.groups()
    if op == ":-":
        return env.get(name) or default
    if op == "-":
        return env.get(name, default)
    return env.get(name, "")


def service_env(service: Service, env: Mapping[str, str]) -> dict[str, str]:
    """The environment laconic-so gave the container: compose values expanded, config.env on
    top, empty values dropped."""
    raw = service.doc.get("environment")
    pairs: dict[str, str] = {}
    if isinstance(raw, Mapping):
        pairs = {str(k): "" if v is None else str(v) for k, v in raw.items()}
    elif isinstance(raw, list):
        pairs = dict(str(item).partition("=")[::2] for item in raw)
    merged = {k: _expand(v, env) for k, v in pairs.items()} | dict(env)
    return {k: v for k, v in merged.items() if v != ""}


@dataclass(frozen=True)
class EnvAt:
    """Names where a variable of the node's environment came from, for report and errors."""

    so: SoDeployment
    service: Service

    def __call__(self, key: str) -> str:
        if key in self.so.env:
            return f"spec.yml: config.{key}" if self.so.env_in_spec else f"config.env: {key}"
        return self.service.key(f"environment.{key}")

    def error(self, key: str, message: str) -> UserError:
        return UserError(f"{self.so.at(self(key))}: {message}")


def _scalar(value: str) -> str | int:
    return int(value) if re.fullmatch(r"-?[1-9][0-9]*|0", value) else value


def parse_args(text: str, where: str, found: Findings) -> dict[str, Any]:
    """EXTRA_ARGS, split on whitespace as the entrypoint did, as a flag map of the chart."""
    flags: dict[str, Any] = {}
    tokens = text.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            found.add("unmapped", where, f"argument {token!r} is not a --flag; left out")
            continue
        name, eq, inline = token[2:].partition("=")
        value: Any = True
        if eq:
            value = _scalar(inline)
        elif i < len(tokens) and not tokens[i].startswith("-"):
            value = _scalar(tokens[i])
            i += 1
        if name in flags and value is not True:
            before = flags[name]
            flags[name] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            flags[name] = value
    return flags


def port_range(value: str, at: EnvAt, taken: tuple[int, ...], found: Findings) -> str:
    key = "DYNAMIC_PORT_RANGE"
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
    if match is None:
        raise at.error(key, f"expected START-END, got {value!r}")
    start, end = int(match[1]), int(match[2])
    if end - start >= MIN_PORT_RANGE:
        return f"{start}-{end}"
    wider = start + MIN_PORT_RANGE
    if wider > 65535 or any(start <= p < wider for p in taken):
        raise at.error(
            key, f"{value} is {end - start} ports wide and agave needs {MIN_PORT_RANGE}, but "
            f"{start}-{wider} would take the RPC, WebSocket or gossip port; choose another range",
        )  # fmt: skip
    found.add(
        "changed", at(key), f"{value} is {end - start} ports wide; agave needs at least "
        f"{MIN_PORT_RANGE}, so it is {start}-{wider} now (the cluster publishes the same ports)",
    )  # fmt: skip
    return f"{start}-{wider}"


def whole_number(value: str, at: EnvAt, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise at.error(key, f"expected a whole number, got {value!r}") from None


def agave_flags(env: Mapping[str, str], mode: str, at: EnvAt, found: Findings) -> dict[str, Any]:
    """The agave flags the image's entrypoint built from its environment, as chart `flags`.

    The chart itself passes ledger, accounts, snapshots, ports, bind address, identity, vote
    account and no-voting; this is the rest of what the entrypoint passed.
    """
    if mode == "test":
        return {}
    entrypoints = [env["VALIDATOR_ENTRYPOINT"]] if env.get("VALIDATOR_ENTRYPOINT") else []
    known = [env["KNOWN_VALIDATOR"]] if env.get("KNOWN_VALIDATOR") else []
    for key, found_list in (("VALIDATOR_ENTRYPOINT", entrypoints), ("KNOWN_VALIDATOR", known)):
        if not found_list:
            raise at.error(key, f"not set, and the {mode} node needs it")
    flags: dict[str, Any] = {
        "entrypoint": entrypoints + env.get("EXTRA_ENTRYPOINTS", "").split(),
        "known-validator": known + env.get("EXTRA_KNOWN_VALIDATORS", "").split(),
        "rpc-bind-address": env.get("RPC_BIND_ADDRESS", "127.0.0.1"),
        "no-os-network-limits-test": True,
        "wal-recovery-mode": "skip_any_corrupted_record",
        "limit-ledger-size": whole_number(
            env.get("LIMIT_LEDGER_SIZE", "50000000"), at, "LIMIT_LEDGER_SIZE"
        ),
    }
    if env.get("NO_SNAPSHOTS") == "true":
        flags["no-snapshots"] = True
    else:
        flags["full-snapshot-interval-slots"] = whole_number(
            env.get("SNAPSHOT_INTERVAL_SLOTS", "100000"), at, "SNAPSHOT_INTERVAL_SLOTS"
        )
        flags["maximum-full-snapshots-to-retain"] = whole_number(
            env.get("MAXIMUM_SNAPSHOTS_TO_RETAIN", "1"), at, "MAXIMUM_SNAPSHOTS_TO_RETAIN"
        )
        if env.get("NO_INCREMENTAL_SNAPSHOTS") != "true":
            flags["maximum-incremental-snapshots-to-retain"] = 2
    indexes = [i.strip() for i in env.get("ACCOUNT_INDEXES", "").split(",") if i.strip()]
    if indexes:
        flags["account-index"] = indexes
    for key, flag in (
        ("EXPECTED_GENESIS_HASH", "expected-genesis-hash"),
        ("EXPECTED_SHRED_VERSION", "expected-shred-version"),
        ("BIND_ADDRESS", "bind-address"),
    ):
        if env.get(key):
            flags[flag] = _scalar(env[key])
    if env.get("JITO_ENABLE") == "true":
        for key, flag in JITO_FLAGS.items():
            if env.get(key) and (key != "JITO_RELAYER_URL" or mode == "validator"):
                flags[flag] = _scalar(env[key])
        found.add("changed", at("JITO_ENABLE"), "Jito flags are passed: the image must be a "
                  "Jito build, as before")  # fmt: skip
    if mode == "rpc":
        flags["log"] = "/data/log/validator.log"
        for flag in (
            "full-rpc-api", "enable-rpc-transaction-history",
            "rpc-pubsub-enable-block-subscription", "enable-extended-tx-metadata-storage",
            "no-wait-for-vote-to-start-leader",
        ):  # fmt: skip
            flags[flag] = True
        if env.get("PUBLIC_RPC_ADDRESS"):
            flags["public-rpc-address"] = env["PUBLIC_RPC_ADDRESS"]
        else:
            flags.update({"private-rpc": True, "allow-private-addr": True, "only-known-rpc": True})
    for name, value in parse_args(env.get("EXTRA_ARGS", ""), at("EXTRA_ARGS"), found).items():
        if name in ("rpc-port", "gossip-port", "dynamic-port-range", "ledger", "identity"):
            found.add(
                "unmapped", at("EXTRA_ARGS"), f"--{name} is set by the chart from ports, "
                "volumes and identity in agave.yaml; left out",
            )  # fmt: skip
            continue
        if name in flags:
            found.add("changed", at("EXTRA_ARGS"), f"--{name} was also set by the entrypoint; "
                      "the EXTRA_ARGS value is kept")  # fmt: skip
        flags[name] = value
    return flags


def passed_env(
    so: SoDeployment, env: Mapping[str, str], at: EnvAt, mode: str, found: Findings
) -> list[dict[str, str]]:
    """Sorts every variable the node saw: mapped, passed on in the chart's env, or reported."""
    readers: dict[str, list[str]] = {}
    for s in so.services:
        if s is not at.service:
            for key in env_keys(s):
                readers.setdefault(key, []).append(s.name)
    downloads = env.get("SNAPSHOT_AUTO_DOWNLOAD", "true").lower() in ("true", "1", "yes")
    passed: list[dict[str, str]] = []
    for key in sorted(env):
        from_config = key in so.env
        if key in MAPPED_ENV or key == METRICS_ENV:
            continue
        if key in JITO_FLAGS and env.get("JITO_ENABLE") == "true":
            continue
        if key.startswith(AGAVE_ENV_PREFIXES):
            passed.append({"name": key, "value": env[key]})
        elif key in JITO_FLAGS or key in INERT_ENV:
            if from_config:
                why = INERT_ENV.get(key, "JITO_ENABLE is not true, so no Jito flag used it")
                found.add("ignored", at(key), why)
        elif key in ENTRYPOINT_ONLY_ENV:
            what = ENTRYPOINT_ONLY_ENV[key]
            inert = (mode == "test") != (what == _TEST_SCRIPT) or (
                what == _DOWNLOAD and not downloads
            )
            if not inert:
                found.add("unmapped", at(key), f"used by {what}; the chart starts agave "
                          "directly, so nothing reads it")  # fmt: skip
            elif from_config:
                found.add("ignored", at(key), f"used by {what}, which did not run")
        elif key in readers:
            if from_config:
                found.add("ignored", at(key), f"read by {', '.join(readers[key])}, not imported")
        else:
            found.add("unmapped", at(key), "no chart equivalent: laconic-so set it in the node's "
                      "container, the chart does not")  # fmt: skip
    return passed
