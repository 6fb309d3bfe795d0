#!/usr/bin/env bash
# Builds (or reuses) `cosign`, the verifier the signing tests check Kiln's signatures with,
# from its Go module at the version pinned in tests/tools/cosign (a `go tool` entry).
#
#   scripts/cosign.sh ensure     build unless cached; print the binary's path (stdout)
#   scripts/cosign.sh path       print the cached binary's path; fail if not built
#
# Cached under ${XDG_CACHE_HOME:-~/.cache}/kiln/cosign/<version>-<key>/cosign, the key
# hashing the Go version, the flags and tests/tools/cosign's go.mod and go.sum; the Go
# build cache sits beside it (cosign/gocache). Kept apart from scripts/node-bins.sh so
# that a change of either never rebuilds the other.
#
# Exit status: 0 done, 3 no Go toolchain, anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE_DIR=tests/tools/cosign
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kiln/cosign"
FLAGS=(-trimpath "-ldflags=-s -w" -mod=readonly)

log() { printf 'cosign.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=scripts/lib/go-cache.sh
. scripts/lib/go-cache.sh

version() {
  awk '$1 == "github.com/sigstore/cosign/v2" && $2 ~ /^v/ { print $2; exit }' "$MODULE_DIR/go.mod"
}

key_dir() {
  local key
  key="$({
    echo "$("$GO_BIN" env GOVERSION) $(uname -m) ${FLAGS[*]} GOFLAGS=$("$GO_BIN" env GOFLAGS)"
    sha256sum "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum"
  } | sha256sum | cut -c1-16)"
  echo "$CACHE_ROOT/$(version)-$key"
}

build() {
  local dir="$1" start="$SECONDS" tmp
  export GOCACHE="$CACHE_ROOT/gocache"
  rm -rf "$CACHE_ROOT"/.build.*
  tmp="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  log "building cosign $(version) from $MODULE_DIR"
  (cd "$MODULE_DIR" && CGO_ENABLED=0 "$GO_BIN" build "${FLAGS[@]}" -o "$tmp/" tool) \
    || die "go build of $MODULE_DIR failed"
  [ -x "$tmp/cosign" ] || die "no cosign was built"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "built $dir/cosign in $((SECONDS - start))s"
}

cmd_ensure() {
  local dir
  dir="$(key_dir)"
  ensure_built "$CACHE_ROOT" "$dir" "$dir/cosign"
  echo "$dir/cosign"
}

GO_BIN="$(find_go)" || { log "no Go toolchain found: install Go, or set GO to the go command"; exit 3; }
case "${1:-}" in
  ensure) cmd_ensure ;;
  path)
    dir="$(key_dir)"
    [ -x "$dir/cosign" ] || die "not built: run scripts/cosign.sh ensure"
    echo "$dir/cosign" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
