#!/usr/bin/env bash
# Makes the container images of the local cluster on this machine, with no pull from
# anywhere, and pushes them to a plain-HTTP registry:
#
#   scripts/local-images.sh pause   REF                      the pod sandbox image
#   scripts/local-images.sh busybox REF...                   a base image (Debian's busybox-static)
#   scripts/local-images.sh builder REF NODE_BIN_DIR         rootless BuildKit, laid out like
#                                                            moby/buildkit:<version>-rootless
#   scripts/local-images.sh kiln    REF KILN_BINARY          the Kiln binary, non-root
#   scripts/local-images.sh sbom-scanner REF...              a stand-in BuildKit SBOM generator
#                                                            (scripts/sbom/e2e-sbom-scanner.sh)
#
# REF is host:port/repository:tag on a registry reached over plain HTTP. Each image is
# one layer made with umoci from files of this machine: static Go binaries as built, and
# for dynamically linked programs (git, runc, a glibc build of kiln) exactly
# the shared libraries `ldd` names, at their paths. Needs umoci, skopeo, busybox-static,
# gcc (the builder's ID-map helpers, scripts/builder/newidmap.c).
#
# Environment:
#   KILN_IMAGES_WORK   scratch directory (default target/local-images)
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${KILN_IMAGES_WORK:-$PWD/target/local-images}"
BUSYBOX=/bin/busybox

log() { printf 'local-images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in umoci skopeo ldd; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install umoci skopeo)"
done

# A fresh, empty rootfs with Debian's merged-/usr layout, so that the library paths ldd
# prints (/lib/x86_64-linux-gnu/…, /lib64/ld-linux-x86-64.so.2) resolve as on the host.
new_rootfs() {
  local name="$1"
  rm -rf "$WORK/$name"
  mkdir -p "$WORK/$name"
  umoci init --layout "$WORK/$name/layout"
  umoci new --image "$WORK/$name/layout:image"
  umoci unpack --image "$WORK/$name/layout:image" "$WORK/$name/bundle" >/dev/null
  ROOTFS="$WORK/$name/bundle/rootfs"
  mkdir -p "$ROOTFS"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,tmp,proc,sys,dev,run}
  ln -s usr/bin "$ROOTFS/bin"
  ln -s usr/sbin "$ROOTFS/sbin"
  ln -s usr/lib "$ROOTFS/lib"
  ln -s usr/lib64 "$ROOTFS/lib64"
  chmod 1777 "$ROOTFS/tmp"
}

# Copies programs (to DEST, or to their own path) with the shared libraries they load.
install_program() { # install_program SRC [DEST] [MODE]
  local src="$1" dest="${2:-$1}" mode="${3:-0755}" lib
  install -D -m "$mode" "$src" "$ROOTFS$dest"
  # `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for the loader;
  # a static binary makes it print "not a dynamic executable" and fail.
  while read -r lib; do
    # With the host's mode: the loader must be executable.
    [ -e "$ROOTFS$lib" ] || install -D -m "$(stat -c %a "$(readlink -f "$lib")")" \
      "$(readlink -f "$lib")" "$ROOTFS$lib"
  done < <(ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

# busybox-static's applets as symlinks, except where a real program is installed.
install_busybox() {
  local applet
  install -m 0755 "$BUSYBOX" "$ROOTFS/usr/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ -e "$ROOTFS/usr/bin/$applet" ] || ln -s busybox "$ROOTFS/usr/bin/$applet"
  done
}

# Packs the rootfs as one layer, sets the image configuration, pushes to every REF.
finish() { # finish NAME REF... -- CONFIG-FLAGS...
  local name="$1" refs=() ref
  shift
  while [ "$1" != "--" ]; do refs+=("$1"); shift; done
  shift
  umoci repack --image "$WORK/$name/layout:image" "$WORK/$name/bundle" >/dev/null
  umoci config --image "$WORK/$name/layout:image" --os linux --architecture amd64 \
    --author kiln-local-images "$@"
  for ref in "${refs[@]}"; do
    skopeo copy --quiet --dest-tls-verify=false \
      "oci:$WORK/$name/layout:image" "docker://$ref"
    log "pushed $ref"
  done
}

cmd_pause() {
  new_rootfs pause
  install -m 0755 "$BUSYBOX" "$ROOTFS/usr/bin/sleep"
  finish pause "$@" -- --config.entrypoint /usr/bin/sleep --config.cmd 2147483647 \
    --config.user 65535:65535
}

cmd_busybox() {
  new_rootfs busybox
  install_busybox
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    > "$ROOTFS/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$ROOTFS/etc/group"
  mkdir -p "$ROOTFS/root"
  finish busybox "$@" -- --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
}

cmd_builder() {
  local ref="$1" bin="$2" program
  [ -x "$bin/buildkitd" ] || die "no buildkitd in $bin (scripts/node-bins.sh ensure)"
  new_rootfs builder
  for program in buildkitd buildctl rootlesskit; do
    install -m 0755 "$bin/$program" "$ROOTFS/usr/bin/$program"
  done
  # BuildKit's OCI worker runs `buildkit-runc` when present, else `runc`.
  install_program "$bin/runc" /usr/bin/buildkit-runc
  install -m 0755 scripts/builder/buildctl-daemonless.sh "$ROOTFS/usr/bin/buildctl-daemonless.sh"
  # RootlessKit maps the subordinate IDs with setuid helpers that keep only CAP_SETUID /
  # CAP_SETGID, as moby/buildkit's are (see newidmap.c for why not Debian's).
  gcc -static -O2 -Wall -Werror -o "$WORK/builder/newidmap" scripts/builder/newidmap.c \
    || die "cannot compile scripts/builder/newidmap.c (apt-get install gcc libc6-dev)"
  install -m 4755 "$WORK/builder/newidmap" "$ROOTFS/usr/bin/newuidmap"
  install -m 4755 "$WORK/builder/newidmap" "$ROOTFS/usr/bin/newgidmap"
  # BuildKit clones Git contexts with the git command (and its HTTP helper).
  install_program /usr/bin/git
  mkdir -p "$ROOTFS/usr/lib/git-core" "$ROOTFS/usr/share/git-core"
  cp -a /usr/lib/git-core/. "$ROOTFS/usr/lib/git-core/"
  cp -a /usr/share/git-core/templates "$ROOTFS/usr/share/git-core/"
  for program in git-remote-http git-http-fetch; do
    install_program "/usr/lib/git-core/$program"
  done
  install_busybox
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$ROOTFS/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' > "$ROOTFS/etc/group"
  # moby/buildkit's range; KILN_BUILDER_SUBIDS overrides it (a user-namespaced pod has only
  # the IDs 0-65535: 1001:64535 fits there).
  echo "user:${KILN_BUILDER_SUBIDS:-100000:65536}" > "$ROOTFS/etc/subuid"
  echo "user:${KILN_BUILDER_SUBIDS:-100000:65536}" > "$ROOTFS/etc/subgid"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$ROOTFS/etc/nsswitch.conf"
  mkdir -p "$ROOTFS/run/user/1000" "$ROOTFS/home/user/.local/tmp" "$ROOTFS/home/user/.local/share/buildkit"
  chown -R 1000:1000 "$ROOTFS/run/user/1000" "$ROOTFS/home/user"
  chmod 0700 "$ROOTFS/run/user/1000"
  finish builder "$ref" -- --config.user 1000:1000 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env HOME=/home/user --config.env USER=user \
    --config.env XDG_RUNTIME_DIR=/run/user/1000 --config.env TMPDIR=/home/user/.local/tmp \
    --config.env BUILDKIT_HOST=unix:///run/user/1000/buildkit/buildkitd.sock \
    --config.volume /home/user/.local/share/buildkit \
    --config.entrypoint rootlesskit --config.entrypoint buildkitd
}

cmd_kiln() {
  local ref="$1" binary="$2"
  [ -x "$binary" ] || die "no kiln binary at $binary"
  new_rootfs kiln
  install_program "$binary" /usr/local/bin/kiln
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$ROOTFS/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$ROOTFS/etc/group"
  mkdir -p "$ROOTFS/home/nonroot"
  chown 65532:65532 "$ROOTFS/home/nonroot"
  finish kiln "$ref" -- --config.user 65532:65532 \
    --config.entrypoint /usr/local/bin/kiln --config.cmd --help
}

cmd_sbom_scanner() {
  new_rootfs sbom-scanner
  install_busybox
  install -m 0755 scripts/sbom/e2e-sbom-scanner.sh "$ROOTFS/usr/bin/kiln-e2e-sbom-scanner"
  finish sbom-scanner "$@" -- --config.entrypoint /usr/bin/kiln-e2e-sbom-scanner \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
}

mkdir -p "$WORK"
command="${1:-}"
shift || true
case "$command" in
  pause) [ $# -ge 1 ] || die "usage: pause REF"; cmd_pause "$@" ;;
  busybox) [ $# -ge 1 ] || die "usage: busybox REF..."; cmd_busybox "$@" ;;
  builder) [ $# -eq 2 ] || die "usage: builder REF NODE_BIN_DIR"; cmd_builder "$@" ;;
  kiln) [ $# -eq 2 ] || die "usage: kiln REF KILN_BINARY"; cmd_kiln "$@" ;;
  sbom-scanner) [ $# -ge 1 ] || die "usage: sbom-scanner REF..."; cmd_sbom_scanner "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
