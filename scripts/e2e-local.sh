#!/usr/bin/env bash
# Runs Kiln's end-to-end suite (tests/e2e.rs) with real builds on a one-node cluster made
# on this machine (scripts/local-cluster.sh), in one command:
#
#   scripts/e2e-local.sh
#
# 1. builds the kiln binary and the e2e test binary (cargo, outside the cluster's network);
# 2. brings the cluster up: control plane, kubelet, containerd, CNI, kube-proxy, DNS, the
#    local registries, and the images made here (pause, busybox, rootless BuildKit);
# 3. makes the Kiln image from the kiln binary (a glibc build: the image holds exactly the
#    libraries ldd names) and pushes it to the cluster's registry;
# 4. installs charts/kiln with `helm install` (two controllers with leader election, the
#    cache on a hostPath PersistentVolume, its docker.io mirror pointed at the local
#    upstream registry holding library/busybox, linux/arm64 mapped to the node's
#    kubernetes.io/os so that the one amd64 node builds both platforms of a Native
#    multi-platform Build) and waits for it;
# 5. runs `cargo test --test e2e` inside the cluster's network namespace, with
#    KILN_E2E_REQUIRE=1: a test that lacks a piece of the setup fails instead of skipping;
# 6. builds the inline test's Dockerfile with plain `buildctl` against a `buildkitd` of its
#    own (scripts/bench-buildctl.sh), the baseline of the measured build times;
# 7. on failure prints the pods, the controller's and the cache's logs and the events;
#    tears the cluster down (keep it with KILN_E2E_KEEP=1).
# Every measured time goes to $KILN_E2E_TIMINGS (and the output).
#
# Environment:
#   KILN_E2E_KEEP=1     leave the cluster up afterwards (scripts/local-cluster.sh down)
#   KILN_E2E_TESTS      a test-name filter passed to `cargo test --test e2e`
#   KILN_E2E_TIMINGS    a file to append the measured times to (default target/e2e-timings.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

RELEASE=kiln
NAMESPACE=kiln-system
TIMINGS="${KILN_E2E_TIMINGS:-$PWD/target/e2e-timings.txt}"
START=$SECONDS

step() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() { printf 'e2e-local: %s\n' "$*" >&2; exit 1; }
timing() { printf '%s %s\n' "$1" "$2" | tee -a "$TIMINGS"; }

# shellcheck source=/dev/null
[ -f target/kiln-tools.env ] && . target/kiln-tools.env
HELM="${KILN_HELM:-$(command -v helm || true)}"
KUBECTL="${KILN_KUBECTL:-$(command -v kubectl || true)}"
[ -x "${HELM:-/nonexistent}" ] || die "helm not found: run scripts/install-test-deps.sh"
[ -x "${KUBECTL:-/nonexistent}" ] || die "kubectl not found: run scripts/install-test-deps.sh"
mkdir -p target
: > "$TIMINGS"

step "building kiln and the e2e tests"
cargo build --locked --bin kiln
cargo test --locked --test e2e --no-run

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -f target/local-cluster/env ]; then
    step "diagnostics (the run failed)"
    local k=(scripts/local-cluster.sh exec "$KUBECTL")
    "${k[@]}" get pods -A -o wide || true
    "${k[@]}" -n "$NAMESPACE" logs -l app.kubernetes.io/component=controller \
      --all-containers --tail=200 --prefix || true
    "${k[@]}" -n "$NAMESPACE" logs -l app.kubernetes.io/component=cache \
      --all-containers --tail=200 --prefix || true
    "${k[@]}" get events -A --sort-by=.lastTimestamp | tail -100 || true
    tail -n 30 target/local-cluster/logs/kubelet.log target/local-cluster/logs/containerd.log || true
  fi
  if [ "${KILN_E2E_KEEP:-}" = 1 ]; then
    echo "keeping the cluster: scripts/local-cluster.sh exec $KUBECTL get pods -A; scripts/local-cluster.sh down"
  else
    scripts/local-cluster.sh down || true
  fi
  exit "$status"
}
trap cleanup EXIT

step "bringing the cluster up"
up_start=$SECONDS
scripts/local-cluster.sh up > /dev/null
timing cluster-up-seconds $((SECONDS - up_start))
# shellcheck source=/dev/null
. target/local-cluster/env
k() { scripts/local-cluster.sh exec "$KUBECTL" "$@"; }

step "the Kiln image"
IMAGE_TAG="e2e-$(git rev-parse --short HEAD 2>/dev/null || echo local)"
KILN_IMAGES_WORK="$KILN_CLUSTER_DIR/images" scripts/local-cluster.sh exec \
  scripts/local-images.sh kiln "$KILN_CLUSTER_REGISTRY/kiln:$IMAGE_TAG" target/debug/kiln

step "helm install charts/kiln into $NAMESPACE"
install_start=$SECONDS
scripts/local-cluster.sh exec "$HELM" install "$RELEASE" charts/kiln \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="$KILN_CLUSTER_REGISTRY/kiln" \
  --set image.tag="$IMAGE_TAG" \
  --set logFormat=text \
  --set cache.persistence.size=5Gi \
  --set cache.gc.keepStorage=4GB \
  --set cache.mirror.upstreams[0].name=docker.io \
  --set "cache.mirror.upstreams[0].url=http://$KILN_CLUSTER_UPSTREAM" \
  --set "controller.plainHttpRegistries[0]=$KILN_CLUSTER_REGISTRY" \
  --set controller.gc.sweepInterval=15s \
  --set controller.baseImageCheckInterval=10s \
  --set controller.sbomGeneratorImage=docker.io/kiln-e2e/sbom-scanner:1 \
  --set controller.builderRequests.cpu=100m \
  --set controller.builderRequests.memory=256Mi \
  --set-json 'controller.platformNodeSelectors={"linux/arm64":{"kubernetes.io/os":"linux"}}' \
  --wait --timeout 5m
timing helm-install-seconds $((SECONDS - install_start))
k -n "$NAMESPACE" get pods -o wide

step "cargo test --test e2e"
KILN_E2E_KUBECONFIG="$KUBECONFIG" \
KILN_E2E_REGISTRY="$KILN_CLUSTER_REGISTRY" \
KILN_E2E_REGISTRY_PLAIN_HTTP=1 \
KILN_E2E_INSTALLED="$NAMESPACE" \
KILN_E2E_UPSTREAM="$KILN_CLUSTER_UPSTREAM" \
KILN_E2E_UPSTREAM_LOG="$KILN_CLUSTER_UPSTREAM_LOG" \
KILN_E2E_HOST_IP="$KILN_CLUSTER_NODE_IP" \
KILN_E2E_USERNS_BUILDER_IMAGE="$KILN_CLUSTER_USERNS_BUILDER_IMAGE" \
KILN_E2E_NETNS="$KILN_CLUSTER_NETNS" \
KILN_E2E_TIMINGS="$TIMINGS" \
KILN_E2E_REQUIRE=1 \
  scripts/local-cluster.sh exec cargo test --offline --locked --test e2e -- --nocapture \
  ${KILN_E2E_TESTS:+"$KILN_E2E_TESTS"}

step "baseline: the inline build with buildctl against a buildkitd of its own"
scripts/local-cluster.sh exec scripts/bench-buildctl.sh "$TIMINGS"

timing e2e-total-seconds $((SECONDS - START))
step "e2e passed"
