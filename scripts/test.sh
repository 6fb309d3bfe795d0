#!/usr/bin/env bash
# The one command that sets up and runs every test of Kiln on a fresh Debian machine.
#
#   scripts/test.sh
#
# It installs what the tests need (scripts/install-test-deps.sh), checks formatting and
# lints, then runs the whole suite. `.ci/run` calls exactly this script.
#
# Environment:
#   KILN_REQUIRE_ENVTEST=1   a missing Go toolchain fails the run instead of skipping the
#                            real-API-server tests (set by .ci/run).
#   KILN_E2E_KUBECONFIG      run the e2e suite against that cluster; skipped otherwise.
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

step "cargo test"
cargo test --all-targets --locked
cargo test --doc --locked

step "all tests passed"
