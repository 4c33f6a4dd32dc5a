#!/usr/bin/env bash
# Builds a single-layer OCI image from a static binary (plus optional files)
# without Docker, buildah or a registry, and optionally imports it into the
# e2e cluster's containerd.
#
#   build-image.sh --name localhost/signet/pause:dev --binary target/.../signet-pause \
#       [--entrypoint /signet-pause] [--arg ARG]... [--file SRC:DEST]... [--env K=V]... \
#       [--output FILE.tar] [--import]
#
# The binary goes to /<basename> unless --entrypoint names another path. The
# result is an OCI image layout (oci-layout, index.json whose manifest carries
# the org.opencontainers.image.ref.name annotation, blobs/sha256/...) tarred to
# --output (default ${SIGNET_CACHE_DIR:-~/.cache/signet}/images/<name>.tar).
# The tar also loads into kind (`kind load image-archive`). --import runs
# `ctr -a $SIGNET_CONTAINERD_SOCK -n k8s.io images import`.
# Use a non-latest tag and imagePullPolicy: Never in pods.
set -euo pipefail

name="" binary="" entrypoint="" output="" import=0
args=() files=() envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --entrypoint) entrypoint="$2"; shift 2 ;;
    --arg) args+=("$2"); shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --import) import=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$name" ] && [ -n "$binary" ] || { echo "build-image.sh: --name and --binary are required" >&2; exit 2; }
[ -f "$binary" ] || { echo "build-image.sh: no such binary: $binary" >&2; exit 1; }
case "$name" in
  *:latest|*@*) echo "build-image.sh: use a non-latest tag (got $name)" >&2; exit 2 ;;
  */*:*) ;;
  *) echo "build-image.sh: name must be a full reference like localhost/signet/x:dev (got $name)" >&2; exit 2 ;;
esac
if file "$binary" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "build-image.sh: warning: $binary is dynamically linked; it will not run in an image without its libraries" >&2
fi
[ -n "$entrypoint" ] || entrypoint="/$(basename "$binary")"
cache="${SIGNET_CACHE_DIR:-$HOME/.cache/signet}"
[ -n "$output" ] || output="$cache/images/$(echo "${name#*/}" | tr '/:' '__').tar"
mkdir -p "$(dirname "$output")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs" layout="$work/layout"
mkdir -p "$root/etc" "$root/tmp" "$layout/blobs/sha256"
chmod 1777 "$root/tmp"
install -D -m 0755 "$binary" "$root$entrypoint"
for f in "${files[@]}"; do
  src="${f%%:*}" dest="${f#*:}"
  [ -e "$src" ] || { echo "build-image.sh: no such file: $src" >&2; exit 1; }
  mkdir -p "$root$(dirname "$dest")"
  cp -a "$src" "$root$dest"
done
# Minimal identity files so tools that look up users do not fail.
[ -e "$root/etc/passwd" ] || printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$root/etc/passwd"
[ -e "$root/etc/group" ] || printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"

# Reproducible, root-owned, uncompressed layer (so its digest is its diff_id).
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" .
blob() { # blob FILE -> prints "sha256:HEX SIZE" after moving FILE into blobs/
  local hex size
  hex="$(sha256sum "$1" | cut -d' ' -f1)"; size="$(stat -c %s "$1")"
  mv "$1" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}
json_str() { # JSON-escape a string (quotes, backslashes, control chars)
  printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | awk 'BEGIN{ORS=""} NR>1{print "\\n"} {print}' | sed 's/^/"/;s/$/"/'
}
json_arr() { local first=1 s; printf '['; for s in "$@"; do [ $first = 1 ] || printf ','; first=0; json_str "$s"; done; printf ']'; }

read -r layer_digest layer_size < <(blob "$work/layer.tar")
env_all=("PATH=/usr/local/bin:/usr/bin:/bin:/" "${envs[@]}")
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":%s,"Cmd":%s,"Env":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/images/build-image.sh"}]}' \
  "$(json_arr "$entrypoint")" "$(json_arr "${args[@]}")" "$(json_arr "${env_all[@]}")" "$layer_digest" > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" "$name" > "$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -C "$layout" -cf "$output.tmp" .
mv -f "$output.tmp" "$output"
echo "image $name ($manifest_digest) -> $output" >&2

if [ "$import" = 1 ]; then
  sock="${SIGNET_CONTAINERD_SOCK:-/run/signet-e2e/containerd/containerd.sock}"
  [ -S "$sock" ] || { echo "build-image.sh: containerd socket $sock not found (is the cluster up?)" >&2; exit 1; }
  ctr -a "$sock" -n k8s.io images import "$output" >&2 \
    || { echo "build-image.sh: ctr import failed" >&2; exit 1; }
  echo "imported $name into $sock (namespace k8s.io)" >&2
fi
