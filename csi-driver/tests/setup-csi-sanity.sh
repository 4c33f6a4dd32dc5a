#!/usr/bin/env bash
# Builds csi-sanity (kubernetes-csi/csi-test) into the Signet tools directory
# for csi-driver/tests/csi_sanity.rs. Idempotent: does nothing when the pinned
# version is already installed. Needs Go and the Go module proxy.
set -euo pipefail

CSI_TEST_VERSION="v5.6.0"
TOOLS_DIR="${SIGNET_TOOLS_DIR:-$HOME/.cache/signet-tools}"
BIN_DIR="$TOOLS_DIR/bin"
STAMP="$BIN_DIR/.csi-sanity.version"

if [[ -x "$BIN_DIR/csi-sanity" && -f "$STAMP" && "$(cat "$STAMP")" == "$CSI_TEST_VERSION" ]]; then
    echo "csi-sanity $CSI_TEST_VERSION already installed in $BIN_DIR"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "go is not installed; csi-sanity needs Go to build" >&2
    exit 1
fi

mkdir -p "$BIN_DIR"
echo "building csi-sanity $CSI_TEST_VERSION into $BIN_DIR"
GOBIN="$BIN_DIR" go install \
    "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION"
echo "$CSI_TEST_VERSION" > "$STAMP"
"$BIN_DIR/csi-sanity" -version
