#!/usr/bin/env bash
# Builds static release binaries of workspace binaries and turns each into an
# image localhost/signet/<name without "signet-">:${SIGNET_IMAGE_TAG:-dev},
# imported into the e2e cluster's containerd when it is running.
#
#   build-all.sh [BIN...]     default: signet-operator signet-agent signet-csi signet-pause signet-probe
#
# Env: SIGNET_IMAGE_TAG (dev), SIGNET_IMPORT (auto|1|0: import into containerd;
#      auto = when the cluster's socket exists), SIGNET_CONTAINERD_SOCK,
#      CARGO_TARGET_DIR (cargo's default: <repo>/target), CARGO (cargo).
# Prints one "BIN IMAGE TAR" line per image on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target=x86_64-unknown-linux-gnu
tag="${SIGNET_IMAGE_TAG:-dev}"
sock="${SIGNET_CONTAINERD_SOCK:-/run/signet-e2e/containerd/containerd.sock}"
cache="${SIGNET_CACHE_DIR:-$HOME/.cache/signet}"

bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(signet-operator signet-agent signet-csi signet-pause signet-probe)

import="${SIGNET_IMPORT:-auto}"
if [ "$import" = auto ]; then
  if [ -S "$sock" ]; then import=1; else import=0; fi
fi

bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
# Static glibc binaries: they run in an image with no libc, and glibc >= 2.34
# resolves DNS and /etc/hosts without loading NSS modules.
echo "building ${bins[*]} (release, static, $target)" >&2
start=$(date +%s)
(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  "${CARGO:-cargo}" build --release --locked --target "$target" "${bin_args[@]}") >&2
echo "cargo build took $(( $(date +%s) - start ))s" >&2

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
for b in "${bins[@]}"; do
  bin="$target_dir/$target/release/$b"
  image="localhost/signet/${b#signet-}:$tag"
  out="$cache/images/${b#signet-}_$tag.tar"
  flags=(--name "$image" --binary "$bin" --output "$out")
  # The operator fetches https_web bundle endpoints (federation) checked
  # against the system roots: it carries Debian's CA certificates.
  roots=/etc/ssl/certs/ca-certificates.crt
  if [ "$b" = signet-operator ]; then
    [ -f "$roots" ] || { echo "build-all.sh: $roots is missing (apt-get install ca-certificates)" >&2; exit 1; }
    flags+=(--file "$roots:$roots")
  fi
  [ "$import" = 1 ] && flags+=(--import)
  SIGNET_CONTAINERD_SOCK="$sock" "$here/build-image.sh" "${flags[@]}"
  echo "$b $image $out"
done
