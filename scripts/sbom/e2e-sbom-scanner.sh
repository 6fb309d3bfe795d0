#!/bin/sh
# A stand-in SBOM generator for the end-to-end tests, run by BuildKit inside a build (the
# real one, docker/buildkit-syft-scanner, cannot be pulled or built on the test machine).
# It follows BuildKit's SBOM scanner protocol (docs/attestations/sbom-protocol.md in
# github.com/moby/buildkit): it reads the built root filesystem at $BUILDKIT_SCAN_SOURCE
# and writes one in-toto statement with an SPDX document, listing every regular file it
# found there, to $BUILDKIT_SCAN_DESTINATION/<name>.spdx.json. What it lists is what the
# build produced, so a test can tell that BuildKit ran it on the image it pushed; it knows
# nothing of packages, which is the real scanner's job.
set -eu
: "${BUILDKIT_SCAN_SOURCE:?BuildKit sets it}"
: "${BUILDKIT_SCAN_DESTINATION:?BuildKit sets it}"
name=$(basename "$BUILDKIT_SCAN_SOURCE")
out="$BUILDKIT_SCAN_DESTINATION/$name.spdx.json"
{
  printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],'
  printf '"predicate":{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT",'
  printf '"name":"%s","documentNamespace":"https://kiln.dev/e2e/sbom/%s",' "$name" "$name"
  printf '"creationInfo":{"created":"1970-01-01T00:00:00Z","creators":["Tool: kiln-e2e-sbom-scanner"]},"files":['
  i=0
  (cd "$BUILDKIT_SCAN_SOURCE" && find . -type f | sort) | while read -r file; do
    i=$((i + 1))
    [ "$i" -eq 1 ] || printf ','
    printf '{"fileName":"%s","SPDXID":"SPDXRef-File-%d"}' "${file#./}" "$i"
  done
  printf ']}}\n'
} > "$out"
