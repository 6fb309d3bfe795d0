# Sourced by the scripts that build test tools from Go modules into a cache keyed by
# version (scripts/envtest.sh, scripts/node-bins.sh, scripts/cosign.sh). The sourcing
# script defines `log` and `build DIR` first.

# The go command: $GO, `go` on PATH, or /usr/local/go/bin/go; fails when there is none.
find_go() {
  if [ -n "${GO:-}" ]; then command -v "$GO" || return 1; return; fi
  if command -v go >/dev/null; then command -v go; return; fi
  if [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

# ensure_built CACHE_ROOT DIR MARKER: runs `build DIR` unless MARKER (a file the build
# makes last) is executable. One build at a time per machine: concurrent test binaries or
# worktrees wait for the first builder, then reuse its result.
ensure_built() {
  local root="$1" dir="$2" marker="$3"
  mkdir -p "$root"
  if [ -x "$marker" ]; then
    log "reusing $marker"
    return
  fi
  exec 9> "$root/.lock"
  if ! flock -n 9; then
    log "another build holds $root/.lock; waiting for it"
    flock 9
  fi
  [ -x "$marker" ] || build "$dir"
}
