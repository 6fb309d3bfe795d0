#!/usr/bin/env bash
# Builds (or reuses) the Kubernetes control plane of the real-API-server tests: one binary,
# `kiln-envtest`, holding kube-apiserver and kube-controller-manager from the Go module
# k8s.io/kubernetes and an embedded etcd from go.etcd.io/etcd/server/v3, dispatched by
# subcommand; and the node components of the local cluster (kube-scheduler, kubelet,
# kube-proxy; scripts/local-cluster.sh), which share most of their packages. The Go module
# lives in tests/envtest/ and pins every version. The binaries report the pinned release
# (e.g. v1.36.4) as their version, as a release build does, so that clients which check it
# (helm's kubeVersion) accept the API server.
#
#   scripts/envtest.sh ensure    build unless cached; print the binary's path (stdout)
#   scripts/envtest.sh path      print the cached binary's path; fail if it is not built
#   scripts/envtest.sh versions  print the pinned versions and the cache key
#   scripts/envtest.sh prune     remove cached binaries of other versions
#
# The binary is cached under ${XDG_CACHE_HOME:-~/.cache}/kiln/envtest/<key>/, where the
# key hashes the Go toolchain version, the build flags and every file of tests/envtest/
# (go.mod, go.sum, sources): a version bump or a source change builds anew, anything else
# reuses it. The Go build cache sits beside it (envtest/gocache), so that a rebuild after
# a small change compiles only what changed. Progress goes to stderr; stdout carries only
# the path, for callers to capture.
#
# Environment:
#   GO                  the go command (default: `go` on PATH, else /usr/local/go/bin/go)
#   XDG_CACHE_HOME      the cache root (default ~/.cache)
#
# Exit status: 0 done, 3 no Go toolchain, anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE_DIR=tests/envtest
BINARY_NAME=kiln-envtest
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kiln/envtest"
export CGO_ENABLED=0

log() { printf 'envtest: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=scripts/lib/go-cache.sh
. scripts/lib/go-cache.sh

pinned() { # the version a module is required at in go.mod
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$MODULE_DIR/go.mod"
}

cache_key() {
  local go_version
  go_version="$("$GO_BIN" env GOVERSION)"
  {
    echo "$go_version $(uname -m) CGO_ENABLED=$CGO_ENABLED ${BUILD_FLAGS[*]} GOFLAGS=$("$GO_BIN" env GOFLAGS)"
    (cd "$MODULE_DIR" && LC_ALL=C find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

# Static, stripped, reproducible: no cgo toolchain needed, smaller link, paths of this
# machine kept out of the binary. The version variables are those Kubernetes' own release
# build sets (hack/lib/version.sh), with a fixed build date so the binary is reproducible.
build_flags() {
  local version major minor ldflags=(-s -w) pkg
  version="$(pinned k8s.io/kubernetes)"
  major="${version#v}"; major="${major%%.*}"
  minor="${version#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=("-X=$pkg.gitVersion=$version" "-X=$pkg.gitMajor=$major" "-X=$pkg.gitMinor=$minor"
      "-X=$pkg.gitTreeState=clean" "-X=$pkg.buildDate=1970-01-01T00:00:00Z")
  done
  BUILD_FLAGS=(-trimpath "-ldflags=${ldflags[*]}" -mod=readonly)
}

key_dir() {
  echo "$CACHE_ROOT/k8s-$(pinned k8s.io/kubernetes)-etcd-$(pinned go.etcd.io/etcd/server/v3)-$(cache_key)"
}

# go build -v names each package as it compiles it; print a line every 100 packages and
# every 20 seconds, so a cold build (minutes on two cores) shows it is moving.
progress() {
  local total="$1" start="$SECONDS" count=0 last_print="$SECONDS" line
  while IFS= read -r line; do
    case "$line" in
      *" "* | *:*) printf '%s\n' "$line" >&2; continue ;; # errors and warnings, verbatim
    esac
    count=$((count + 1))
    if [ $((count % 100)) -eq 0 ] || [ $((SECONDS - last_print)) -ge 20 ]; then
      log "$(printf '[%4d/%d packages, %3ds] %s' "$count" "$total" $((SECONDS - start)) "$line")"
      last_print="$SECONDS"
    fi
  done
}

build() {
  local dir="$1" start="$SECONDS" total tmp
  mkdir -p "$CACHE_ROOT"
  export GOCACHE="$CACHE_ROOT/gocache"
  log "building $BINARY_NAME: k8s.io/kubernetes $(pinned k8s.io/kubernetes), go.etcd.io/etcd/server/v3 $(pinned go.etcd.io/etcd/server/v3), $("$GO_BIN" env GOVERSION)"
  log "listing packages, downloading modules when missing (GOMODCACHE=$("$GO_BIN" env GOMODCACHE))"
  total="$(cd "$MODULE_DIR" && "$GO_BIN" list -mod=readonly -deps . | wc -l)" || die "go list failed"
  log "compiling up to $total packages (GOCACHE=$GOCACHE; a cold build takes minutes)"
  # We hold the lock: any other build directory is a leftover of a killed build.
  rm -rf "$CACHE_ROOT"/.build.*
  tmp="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  if ! (cd "$MODULE_DIR" && "$GO_BIN" build -v "${BUILD_FLAGS[@]}" -o "$tmp/$BINARY_NAME" . 2>&1) \
    | progress "$total"; then
    die "go build failed"
  fi
  [ -x "$tmp/$BINARY_NAME" ] || die "go build wrote no binary"
  "$tmp/$BINARY_NAME" version > "$tmp/VERSIONS"
  # Publish atomically: a reader sees either no directory or a complete one.
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "built $dir/$BINARY_NAME in $((SECONDS - start))s ($(du -h "$dir/$BINARY_NAME" | cut -f1))"
}

cmd_ensure() {
  local dir
  dir="$(key_dir)"
  ensure_built "$CACHE_ROOT" "$dir" "$dir/$BINARY_NAME"
  echo "$dir/$BINARY_NAME"
}

cmd_path() {
  local dir
  dir="$(key_dir)"
  [ -x "$dir/$BINARY_NAME" ] || die "not built: run scripts/envtest.sh ensure"
  echo "$dir/$BINARY_NAME"
}

cmd_versions() {
  echo "k8s.io/kubernetes $(pinned k8s.io/kubernetes)"
  echo "go.etcd.io/etcd/server/v3 $(pinned go.etcd.io/etcd/server/v3)"
  echo "go $("$GO_BIN" env GOVERSION)"
  echo "cache $(key_dir)"
}

cmd_prune() {
  local keep
  keep="$(key_dir)"
  for dir in "$CACHE_ROOT"/k8s-*; do
    if [ -d "$dir" ] && [ "$dir" != "$keep" ]; then
      log "removing $dir"
      rm -rf "$dir"
    fi
  done
}

# Exit code 3 means "no toolchain", which the test harness reports as a skip (or, with
# KILN_REQUIRE_ENVTEST=1, a failure); every other failure is an error.
GO_BIN="$(find_go)" || { log "no Go toolchain found: install Go, or set GO to the go command"; exit 3; }
build_flags
case "${1:-}" in
  ensure) cmd_ensure ;;
  path) cmd_path ;;
  versions) cmd_versions ;;
  prune) cmd_prune ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
