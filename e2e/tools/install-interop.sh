#!/usr/bin/env bash
# Installs the third-party SPIFFE clients that e2e/tests/standalone_interop.rs
# runs against a real Signet stack. Idempotent: a second run only checks.
#
#   ${SIGNET_TOOLS_DIR:-$HOME/.cache/signet-tools}/
#     venv/            Python venv with py-spiffe (PyPI package `spiffe`)
#     bin/spire-agent  SPIRE's agent binary, for its `api` client commands
#                      (fetch x509 -write, fetch/validate jwt, watch), which
#                      are built on go-spiffe, and as a SPIRE agent for the
#                      federation test
#     bin/spire-server SPIRE's server, the other trust domain of
#                      e2e/tests/standalone_spire_federation.rs
#     bin/go-spiffe-mtls  a go-spiffe mTLS workload (e2e/tools/go-spiffe-mtls)
#     src/             the Go modules the binaries are built from (kept for go.sum)
#
# Everything comes from PyPI and the Go module proxy through pip and go.
#
# Why not spiffe-helper: the Go module proxy refuses every version of
# github.com/spiffe/spiffe-helper here (403 "not available"), so it cannot be
# built. `spire-agent api fetch x509 -write DIR` writes the same three files
# (SVID chain, private key 0600, bundle) through go-spiffe, and
# `spire-agent api watch` is the long-running consumer. The go_tool function
# below takes spiffe-helper unchanged the day the proxy serves it:
#   go_tool spiffe-helper github.com/spiffe/spiffe-helper/cmd/spiffe-helper vX.Y.Z
#
# Environment: SIGNET_TOOLS_DIR (where to install), PYTHON (default python3).
set -euo pipefail

PY_SPIFFE_VERSION=0.3.2
SPIRE_VERSION=v1.13.3

TOOLS_DIR=${SIGNET_TOOLS_DIR:-$HOME/.cache/signet-tools}
PYTHON=${PYTHON:-python3}
mkdir -p "$TOOLS_DIR/bin"
TOOLS_DIR=$(cd "$TOOLS_DIR" && pwd)

say() { printf 'install-interop: %s\n' "$*"; }

# ------------------------------------------------------------------ py-spiffe
venv=$TOOLS_DIR/venv
stamp=$venv/.signet-py-spiffe
if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$PY_SPIFFE_VERSION" ]]; then
    say "py-spiffe $PY_SPIFFE_VERSION already in $venv"
else
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            say "installing python3-venv with apt-get"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            say "error: $PYTHON cannot create a venv; install python3-venv" >&2
            exit 1
        fi
    fi
    rm -rf "$venv"
    say "creating $venv"
    "$PYTHON" -m venv "$venv"
    say "pip install spiffe==$PY_SPIFFE_VERSION"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "spiffe==$PY_SPIFFE_VERSION"
    "$venv/bin/python" -c 'import spiffe, spiffe.workloadapi'
    printf '%s\n' "$PY_SPIFFE_VERSION" >"$stamp"
fi

# ---------------------------------------------------------------- Go programs
# go_tool NAME PACKAGE VERSION: builds PACKAGE@VERSION into $TOOLS_DIR/bin/NAME.
# The module is added with `go get -tool` in a module of our own (the proxy
# serves spire without a version list, so `go install PKG@VERSION` is refused).
go_tool() {
    local name=$1 package=$2 version=$3
    local binary=$TOOLS_DIR/bin/$name
    local stamp=$TOOLS_DIR/bin/.$name.version
    local want="$package@$version $(go env GOVERSION)"
    if [[ -x $binary && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        say "$name $version already at $binary"
        return
    fi
    local src=$TOOLS_DIR/src/$name
    mkdir -p "$src"
    if [[ ! -f $src/go.mod ]]; then
        (cd "$src" && go mod init "signet-tools/$name" >/dev/null 2>&1)
    fi
    say "go get -tool $package@$version (in $src)"
    if ! (cd "$src" && go get -tool "$package@$version") >"$src/go-get.log" 2>&1; then
        cat "$src/go-get.log" >&2
        exit 1
    fi
    say "building $name (several minutes the first time)"
    (cd "$src" && GOBIN=$TOOLS_DIR/bin go install "$package")
    printf '%s\n' "$want" >"$stamp"
}

if ! command -v go >/dev/null; then
    say "error: go is not on PATH (needed to build spire-agent)" >&2
    exit 1
fi
go_tool spire-agent github.com/spiffe/spire/cmd/spire-agent "$SPIRE_VERSION"
go_tool spire-server github.com/spiffe/spire/cmd/spire-server "$SPIRE_VERSION"

# go-spiffe-mtls: this repository's go-spiffe test workload (see its
# main.go), rebuilt when its sources or the Go version change.
mtls_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/go-spiffe-mtls" && pwd)
mtls_want="$(cat "$mtls_src"/go.mod "$mtls_src"/go.sum "$mtls_src"/main.go | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"
mtls_stamp=$TOOLS_DIR/bin/.go-spiffe-mtls.version
if [[ -x $TOOLS_DIR/bin/go-spiffe-mtls && -f $mtls_stamp && $(cat "$mtls_stamp") == "$mtls_want" ]]; then
    say "go-spiffe-mtls already at $TOOLS_DIR/bin/go-spiffe-mtls"
else
    say "building go-spiffe-mtls"
    (cd "$mtls_src" && go build -o "$TOOLS_DIR/bin/go-spiffe-mtls" .)
    printf '%s\n' "$mtls_want" >"$mtls_stamp"
fi

say "done:"
say "  py-spiffe $PY_SPIFFE_VERSION      $venv/bin/python"
say "  spire-agent $SPIRE_VERSION  $TOOLS_DIR/bin/spire-agent"
say "  spire-server $SPIRE_VERSION $TOOLS_DIR/bin/spire-server"
say "  go-spiffe-mtls         $TOOLS_DIR/bin/go-spiffe-mtls"
say "run: SIGNET_REQUIRE_INTEROP=1 cargo test -p signet-e2e --test standalone_interop"
