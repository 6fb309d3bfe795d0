#!/usr/bin/env bash
# The one command that sets up and runs every test of Kiln on a fresh Debian machine.
#
#   scripts/test.sh
#
# It installs what the tests need (scripts/install-test-deps.sh), checks formatting and
# lints, runs the whole suite, then the end-to-end suite with real builds on a one-node
# cluster made on this machine (scripts/e2e-local.sh; needs root). `.ci/run` calls
# exactly this script.
#
# Environment:
#   KILN_REQUIRE_ENVTEST=1   a missing Go toolchain fails the run instead of skipping the
#                            real-API-server tests (set by .ci/run).
#   KILN_E2E_LOCAL=0         leave out the local cluster; the e2e suite then runs against
#                            KILN_E2E_KUBECONFIG if set, and is skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-test-deps.sh
# shellcheck source=/dev/null
[ -f "${KILN_TOOLS_ENV:-target/kiln-tools.env}" ] && . "${KILN_TOOLS_ENV:-target/kiln-tools.env}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

if [ "${KILN_E2E_LOCAL:-1}" = 1 ]; then
  # Every target but the e2e suite, which runs below against the local cluster.
  targets=()
  for file in tests/*.rs; do
    name="$(basename "$file" .rs)"
    [ "$name" = e2e ] || targets+=(--test "$name")
  done
  step "cargo test (all targets but the e2e suite)"
  cargo test --locked --lib --bins --examples --benches "${targets[@]}"
  cargo test --doc --locked

  step "end-to-end: real builds on a local cluster (scripts/e2e-local.sh)"
  scripts/e2e-local.sh
else
  step "cargo test"
  cargo test --all-targets --locked
  cargo test --doc --locked
fi

step "all tests passed"
