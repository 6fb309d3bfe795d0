#!/usr/bin/env bash
# The baseline of Kiln's build timings: the e2e suite's inline Dockerfile built by
# `buildctl` against a `buildkitd` of its own on the same machine, with no Kubernetes and
# no Kiln in between (scripts/e2e-local.sh runs it while the local cluster is up).
#
#   scripts/local-cluster.sh exec scripts/bench-buildctl.sh [TIMINGS_FILE]
#
# It starts buildkitd (as root, the OCI worker with the node's runc, an empty state
# directory), builds the Dockerfile FROM the cluster's upstream registry (busybox) and
# pushes to its image registry, then builds it again (every step cached), and prints:
#   buildctl daemon-started=… first-build-done=… (seconds from the daemon's start)
#   buildctl second-build=…                       (the cached rebuild alone)
# Needs the environment of `scripts/local-cluster.sh env`.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KILN_CLUSTER_NODE_BIN:?run inside scripts/local-cluster.sh exec}"
TIMINGS="${1:-/dev/null}"
work="$(mktemp -d)"
daemon=
cleanup() {
  if [ -n "$daemon" ]; then
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  # Snapshots are mounted while the daemon runs; it unmounts them on the way out.
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p "$work/context"
cat > "$work/buildkitd.toml" <<EOF
[registry."$KILN_CLUSTER_UPSTREAM"]
  http = true
[registry."$KILN_CLUSTER_REGISTRY"]
  http = true
EOF
printf 'FROM %s/library/busybox:1.36\nCOPY greeting /greeting\nRUN cat /greeting\n' \
  "$KILN_CLUSTER_UPSTREAM" > "$work/context/Dockerfile"
printf 'hello from buildctl %s\n' "$$" > "$work/context/greeting"

export PATH="$KILN_CLUSTER_NODE_BIN:$PATH"
addr="unix://$work/buildkitd.sock"
start="$(now)"
buildkitd --root "$work/root" --addr "$addr" --config "$work/buildkitd.toml" \
  > "$work/buildkitd.log" 2>&1 &
daemon=$!
until buildctl --addr "$addr" debug workers > /dev/null 2>&1; do
  kill -0 "$daemon" 2>/dev/null || { cat "$work/buildkitd.log" >&2; exit 1; }
  sleep 0.05
done
started="$(since "$start")"
build() {
  buildctl --addr "$addr" build --progress=plain --frontend=dockerfile.v0 \
    --local=context="$work/context" --local=dockerfile="$work/context" \
    --output "type=image,name=$KILN_CLUSTER_REGISTRY/bench/buildctl:$$,push=true" \
    > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
}
build
first="$(since "$start")"
again="$(now)"
build
second="$(since "$again")"
grep -q CACHED "$work/build.log" || { echo "the second build was not cached" >&2; exit 1; }
printf 'buildctl daemon-started=%ss first-build-done=%ss (from the daemon start)\n' "$started" "$first" | tee -a "$TIMINGS"
printf 'buildctl second-build=%ss (cached)\n' "$second" | tee -a "$TIMINGS"
