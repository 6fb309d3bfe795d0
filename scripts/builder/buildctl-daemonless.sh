#!/bin/sh
# buildctl-daemonless.sh: runs one `buildctl` command against a BuildKit daemon of its own,
# started for that command and stopped after it, the way the script of the same name in
# moby/buildkit's rootless images does (Kiln's build pods run `buildctl-daemonless.sh build
# ...`). Written for the builder image of the local cluster (scripts/local-images.sh).
#
#   BUILDKITD_FLAGS    more buildkitd flags (Kiln passes --oci-worker-no-process-sandbox
#                      and --config=...)
#   BUILDCTL_CONNECT_RETRIES_MAX   how many times to ask the daemon whether it is up (100)
#
# As a non-root user the daemon runs under rootlesskit (a user namespace with the
# subordinate IDs of /etc/subuid); as root it runs as is. buildctl's exit status is the
# script's; a SIGTERM (the pod deleted, the Build cancelled) stops both.
set -eu

: "${BUILDCTL:=buildctl}"
: "${BUILDKITD:=buildkitd}"
: "${ROOTLESSKIT:=rootlesskit}"
: "${BUILDKITD_FLAGS:=}"
: "${BUILDCTL_CONNECT_RETRIES_MAX:=100}"

work=$(mktemp -d "${TMPDIR:-/tmp}/buildctl-daemonless.XXXXXX")
daemon=
client=

stop() {
    if [ -n "$client" ]; then kill "$client" 2>/dev/null || true; fi
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if [ "$(id -u)" = 0 ]; then
    addr=unix:///run/buildkit/buildkitd.sock
    helper=
else
    addr="unix://${XDG_RUNTIME_DIR:?XDG_RUNTIME_DIR must be set for a rootless daemon}/buildkit/buildkitd.sock"
    helper=$ROOTLESSKIT
fi

# shellcheck disable=SC2086 # BUILDKITD_FLAGS is a list of flags
$helper $BUILDKITD $BUILDKITD_FLAGS --addr="$addr" >"$work/log" 2>&1 &
daemon=$!

try=0
until $BUILDCTL --addr="$addr" debug workers >/dev/null 2>&1; do
    if ! kill -0 "$daemon" 2>/dev/null || [ "$try" -ge "$BUILDCTL_CONNECT_RETRIES_MAX" ]; then
        echo "buildctl-daemonless.sh: buildkitd did not come up at $addr; its log:" >&2
        cat "$work/log" >&2
        exit 1
    fi
    sleep 0.1
    try=$((try + 1))
done

# In the background, so that the TERM trap runs at once rather than after buildctl ends.
$BUILDCTL --addr="$addr" "$@" &
client=$!
status=0
wait "$client" || status=$?
client=
exit "$status"
