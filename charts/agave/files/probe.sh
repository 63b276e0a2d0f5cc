#!/usr/bin/env bash
# Health checks of the node through its JSON-RPC on 127.0.0.1 (bash only: no curl in the image).
# GET /health answers 200 even when the node is behind, so every check here reads the body.
#   probe.sh alive   the RPC answers getSlot with a slot number (startup and liveness)
#   probe.sh ready   test mode: getHealth is "ok"; otherwise the processed slot is within
#                    MAX_SLOT_LAG of the highest slot the node has shreds for
set -u
port=${RPC_PORT:-8899}

# Prints the body of the JSON-RPC response to METHOD [PARAMS].
rpc() {
  local body="{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\"${2:+,\"params\":$2}}"
  local response
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "${#body}" "$body" >&3
  response=$(cat <&3)
  exec 3>&-
  printf '%s' "${response#*$'\r\n\r\n'}"
}

# Prints the numeric "result" of the JSON-RPC call, or fails.
rpc_number() {
  local body
  body=$(rpc "$@") || return 1
  [[ $body =~ \"result\":[[:space:]]*([0-9]+) ]] || { echo "no slot in: $body" >&2; return 1; }
  printf '%s' "${BASH_REMATCH[1]}"
}

case "${1:-}" in
  alive)
    rpc_number getSlot >/dev/null
    ;;
  ready)
    if [ "${MODE:-test}" = test ]; then
      body=$(rpc getHealth) || exit 1
      [[ $body =~ \"result\":[[:space:]]*\"ok\" ]] || { echo "not healthy: $body" >&2; exit 1; }
    else
      slot=$(rpc_number getSlot '[{"commitment":"processed"}]') || exit 1
      tip=$(rpc_number getMaxShredInsertSlot) || exit 1
      lag=$((tip - slot))
      if [ "$lag" -gt "${MAX_SLOT_LAG:-150}" ]; then
        echo "behind: slot $slot, shreds up to $tip (lag $lag > ${MAX_SLOT_LAG:-150})" >&2
        exit 1
      fi
    fi
    ;;
  *)
    echo "usage: probe.sh alive|ready" >&2
    exit 2
    ;;
esac
