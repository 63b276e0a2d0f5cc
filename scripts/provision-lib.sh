# Helpers shared by scripts/provision-tools and scripts/provision-kind (sourced, not run).
# Expects $here (the scripts folder) to be set; sets $cache, $bin and the functions below.

cache=${LACONIC_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/laconic-helm}
bin=$cache/bin
mkdir -p "$bin" "$cache/tools"
export GOFLAGS=${GOFLAGS:--mod=mod}

log() { printf 'provision: %s\n' "$*" >&2; }

# link NAME TARGET: points $bin/NAME at a versioned binary.
link() { ln -sfn "$2" "$bin/$1"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# run_step NAME: runs one step and says how long it took (the CI budget is read from these lines).
run_step() {
  local started=$SECONDS
  "$1"
  log "step $1 done in $((SECONDS - started)) s"
}
