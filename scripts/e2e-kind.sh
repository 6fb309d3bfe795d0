#!/usr/bin/env bash
# Runs Kiln's end-to-end suite (tests/e2e.rs) on a throwaway kind cluster:
#
#   scripts/e2e-kind.sh
#
# 1. checks its tools: docker (with a running daemon), kind, cargo, and helm and kubectl
#    (from scripts/install-test-deps.sh, or on PATH); a missing one stops it with how to
#    get it;
# 2. starts a local registry container `kind-registry` (localhost:5001 on this machine,
#    kind-registry:5000 inside the cluster), unless it runs already;
# 3. creates the kind cluster `kiln-e2e` and joins the registry to its network;
# 4. builds the Kiln image from config/image/Dockerfile and loads it into the cluster;
# 5. installs charts/kiln into namespace kiln-system (two controller replicas with leader
#    election, the cache service with its volume, builders allowed to push to the local
#    registry over plain HTTP, linux/arm64 mapped to the node's kubernetes.io/os so that
#    the one-architecture cluster builds both platforms of a Native Build) and waits for it
#    to be ready;
# 6. runs `cargo test --test e2e` against it: KILN_E2E_KUBECONFIG, KILN_E2E_REGISTRY=
#    kind-registry:5000, KILN_E2E_REGISTRY_PLAIN_HTTP=1, KILN_E2E_INSTALLED=kiln-system;
# 7. on failure prints the controller's and the cache's logs and the cluster's events;
#    deletes the cluster at the end (keep it with KILN_E2E_KEEP=1).
#
# Environment:
#   KILN_E2E_CLUSTER   name of the kind cluster (default kiln-e2e)
#   KILN_E2E_KEEP=1    keep the cluster (and registry) afterwards, for a look around
#   KILN_E2E_IMAGE     use this image (already built) instead of building one
#   KIND_NODE_IMAGE    the kind node image (default: kind's own default)
#   KILN_E2E_TESTS     a test-name filter passed to `cargo test --test e2e`
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KILN_E2E_CLUSTER:-kiln-e2e}"
REGISTRY_NAME=kind-registry
REGISTRY_HOST_PORT=5001
RELEASE=kiln
NAMESPACE=kiln-system
WORK="target/e2e"
KUBECONFIG_FILE="$WORK/kubeconfig"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }

# --- tools ----------------------------------------------------------------------------------
step "checking tools"
# shellcheck source=/dev/null
[ -f target/kiln-tools.env ] && . target/kiln-tools.env
HELM="${KILN_HELM:-$(command -v helm || true)}"
KUBECTL="${KILN_KUBECTL:-$(command -v kubectl || true)}"
command -v docker >/dev/null \
  || die "docker not found: install Docker Engine (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 \
  || die "docker is installed but its daemon does not answer (docker info failed): start it, or run this where one runs"
command -v kind >/dev/null \
  || die "kind not found: install it (go install sigs.k8s.io/kind@v0.29.0, or https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
command -v cargo >/dev/null || die "cargo not found: run scripts/install-test-deps.sh"
[ -x "${HELM:-/nonexistent}" ] || die "helm not found: run scripts/install-test-deps.sh"
[ -x "${KUBECTL:-/nonexistent}" ] || die "kubectl not found: run scripts/install-test-deps.sh"
echo "docker $(docker version --format '{{.Server.Version}}'), $(kind version), helm $("$HELM" version --short)"
mkdir -p "$WORK"

# --- registry -------------------------------------------------------------------------------
step "local registry $REGISTRY_NAME (localhost:$REGISTRY_HOST_PORT)"
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != "true" ]; then
  docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
  docker run -d --restart=always --name "$REGISTRY_NAME" \
    -p "127.0.0.1:$REGISTRY_HOST_PORT:5000" docker.io/library/registry:2 >/dev/null
fi

# --- cluster --------------------------------------------------------------------------------
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -f "$KUBECONFIG_FILE" ]; then
    step "diagnostics (the run failed)"
    "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" get pods -o wide || true
    "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" logs \
      -l app.kubernetes.io/component=controller --all-containers --tail=200 --prefix || true
    "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" logs \
      -l app.kubernetes.io/component=cache --all-containers --tail=200 --prefix || true
    "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get events -A --sort-by=.lastTimestamp | tail -100 || true
  fi
  if [ "${KILN_E2E_KEEP:-}" = "1" ]; then
    echo "keeping cluster $CLUSTER: export KUBECONFIG=$KUBECONFIG_FILE"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  # containerd reads per-registry settings from /etc/containerd/certs.d, where the node's
  # localhost:5001 is pointed at the registry container below.
  cat > "$WORK/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
EOF
  kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
for node in $(kind get nodes --name "$CLUSTER"); do
  dir="/etc/containerd/certs.d/localhost:$REGISTRY_HOST_PORT"
  docker exec "$node" mkdir -p "$dir"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" | docker exec -i "$node" cp /dev/stdin "$dir/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = "null" ]; then
  docker network connect kind "$REGISTRY_NAME"
fi
# Documents the registry for tools that look (KEP-1755).
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:$REGISTRY_HOST_PORT"
    hostFromClusterNetwork: "$REGISTRY_NAME:5000"
EOF

# --- image ----------------------------------------------------------------------------------
IMAGE="${KILN_E2E_IMAGE:-}"
if [ -z "$IMAGE" ]; then
  IMAGE="kiln:e2e-$(git rev-parse --short HEAD 2>/dev/null || echo local)"
  step "building $IMAGE"
  docker build -f config/image/Dockerfile -t "$IMAGE" .
fi
step "loading $IMAGE into $CLUSTER"
kind load docker-image --name "$CLUSTER" "$IMAGE"

# --- Kiln -----------------------------------------------------------------------------------
step "installing charts/kiln into $NAMESPACE"
"$HELM" upgrade --install "$RELEASE" charts/kiln \
  --kubeconfig "$KUBECONFIG_FILE" \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" \
  --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set logFormat=text \
  --set cache.persistence.size=5Gi \
  --set cache.gc.keepStorage=4GB \
  --set "controller.plainHttpRegistries[0]=$REGISTRY_NAME:5000" \
  --set-json 'controller.platformNodeSelectors={"linux/arm64":{"kubernetes.io/os":"linux"}}' \
  --wait --timeout 5m
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" get pods -o wide

# --- tests ----------------------------------------------------------------------------------
step "cargo test --test e2e"
KILN_E2E_KUBECONFIG="$PWD/$KUBECONFIG_FILE" \
KILN_E2E_REGISTRY="$REGISTRY_NAME:5000" \
KILN_E2E_REGISTRY_PLAIN_HTTP=1 \
KILN_E2E_INSTALLED="$NAMESPACE" \
  cargo test --locked --test e2e -- --nocapture ${KILN_E2E_TESTS:+"$KILN_E2E_TESTS"}

step "e2e passed"
