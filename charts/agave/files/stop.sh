#!/usr/bin/env bash
# preStop hook: asks agave-validator to exit through its admin socket in the ledger, then waits
# until the process is gone, so Kubernetes' SIGTERM only comes once the ledger is closed cleanly
# (a hard kill forces a snapshot reload on the next start). Arguments: flags of `exit`.
set -u
ledger=${LEDGER:-/data/ledger}

running() {
  local comm
  for comm in /proc/[0-9]*/comm; do
    [ "$(cat "$comm" 2>/dev/null)" = agave-validator ] && return 0
  done
  return 1
}

agave-validator --ledger "$ledger" exit "$@" || echo "agave-validator exit failed; waiting anyway" >&2
while running; do
  sleep 2
done
