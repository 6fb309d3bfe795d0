#!/usr/bin/env bash
# Builds (or reuses) the container runtime and the builder of the local cluster
# (scripts/local-cluster.sh), from their Go modules at pinned versions:
#
#   containerd, containerd-shim-runc-v2   tests/node/containerd (go tool entries)
#   buildkitd, buildctl                   tests/node/buildkit (go tool entries), at the
#                                         version of the controller's default builder image
#   runc                                  github.com/opencontainers/runc, cgo with the
#                                         `seccomp` tag (libseccomp-dev, pkg-config): the
#                                         kubelet's RuntimeDefault profile needs it
#   rootlesskit                           github.com/rootless-containers/rootlesskit/v2,
#                                         the version BuildKit's own Dockerfile pins
#
# The Kubernetes components (kubelet, kube-scheduler, kube-proxy) are subcommands of
# kiln-envtest (scripts/envtest.sh), which shares their packages with the API server.
#
#   scripts/node-bins.sh ensure     build unless cached; print the bin directory (stdout)
#   scripts/node-bins.sh path       print the cached bin directory; fail if not built
#   scripts/node-bins.sh versions   print the pinned versions and the cache key
#
# Cached under ${XDG_CACHE_HOME:-~/.cache}/kiln/node/<key>/bin, the key hashing the Go
# version, the flags and every file of tests/node/ (go.mod, go.sum) and the pins below;
# the Go build cache sits beside it (node/gocache).
#
# Exit status: 0 done, 3 no Go toolchain, anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNC_VERSION=v1.4.4
ROOTLESSKIT_VERSION=v2.3.5
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/kiln/node"
# Static where cgo is not needed (buildkitd, buildctl and rootlesskit run inside the
# builder image, which has no C library of theirs), stripped, without this machine's paths.
STATIC_FLAGS=(-trimpath "-ldflags=-s -w" -mod=readonly)
INSTALL_FLAGS=(-trimpath "-ldflags=-s -w")
RUNC_FLAGS=(-trimpath "-ldflags=-s -w" -tags seccomp)

log() { printf 'node-bins: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=scripts/lib/go-cache.sh
. scripts/lib/go-cache.sh

pinned() { # pinned MODULE_DIR MODULE: the version a module is required at
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"
}

cache_key() {
  {
    echo "$("$GO_BIN" env GOVERSION) $(uname -m) ${STATIC_FLAGS[*]} ${RUNC_FLAGS[*]}"
    echo "runc $RUNC_VERSION rootlesskit $ROOTLESSKIT_VERSION GOFLAGS=$("$GO_BIN" env GOFLAGS)"
    LC_ALL=C find tests/node -type f \( -name 'go.mod' -o -name 'go.sum' -o -name '*.go' \) \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

key_dir() {
  echo "$CACHE_ROOT/containerd-$(pinned tests/node/containerd github.com/containerd/containerd/v2)-buildkit-$(pinned tests/node/buildkit github.com/moby/buildkit)-$(cache_key)"
}

build() {
  local dir="$1" start="$SECONDS" tmp
  export GOCACHE="$CACHE_ROOT/gocache"
  rm -rf "$CACHE_ROOT"/.build.*
  tmp="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  mkdir -p "$tmp/bin"
  for module in containerd buildkit; do
    log "building the tools of tests/node/$module"
    (cd "tests/node/$module" && CGO_ENABLED=0 "$GO_BIN" build "${STATIC_FLAGS[@]}" -o "$tmp/bin/" tool) \
      || die "go build of tests/node/$module failed"
  done
  log "building rootlesskit $ROOTLESSKIT_VERSION"
  CGO_ENABLED=0 GOBIN="$tmp/bin" "$GO_BIN" install "${INSTALL_FLAGS[@]}" \
    "github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit@$ROOTLESSKIT_VERSION" \
    || die "go install rootlesskit failed"
  log "building runc $RUNC_VERSION (cgo, seccomp)"
  pkg-config --exists libseccomp || die "libseccomp-dev and pkg-config are needed for runc (apt-get install libseccomp-dev pkg-config)"
  CGO_ENABLED=1 GOBIN="$tmp/bin" "$GO_BIN" install "${RUNC_FLAGS[@]}" \
    "github.com/opencontainers/runc@$RUNC_VERSION" || die "go install runc failed"
  for binary in containerd containerd-shim-runc-v2 buildkitd buildctl rootlesskit runc; do
    [ -x "$tmp/bin/$binary" ] || die "no $binary was built"
  done
  {
    echo "containerd $(pinned tests/node/containerd github.com/containerd/containerd/v2)"
    echo "buildkit $(pinned tests/node/buildkit github.com/moby/buildkit)"
    echo "runc $RUNC_VERSION"
    echo "rootlesskit $ROOTLESSKIT_VERSION"
  } > "$tmp/VERSIONS"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "built $dir/bin in $((SECONDS - start))s"
}

cmd_ensure() {
  local dir
  dir="$(key_dir)"
  ensure_built "$CACHE_ROOT" "$dir" "$dir/bin/runc"
  echo "$dir/bin"
}

GO_BIN="$(find_go)" || { log "no Go toolchain found: install Go, or set GO to the go command"; exit 3; }
case "${1:-}" in
  ensure) cmd_ensure ;;
  path)
    dir="$(key_dir)"
    [ -x "$dir/bin/runc" ] || die "not built: run scripts/node-bins.sh ensure"
    echo "$dir/bin" ;;
  versions) cat "$(key_dir)/VERSIONS" 2>/dev/null || true; echo "cache $(key_dir)" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
