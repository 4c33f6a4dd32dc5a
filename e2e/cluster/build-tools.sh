#!/usr/bin/env bash
# Builds the cluster's binaries from pinned Go modules into
# ${SIGNET_CACHE_DIR:-$HOME/.cache/signet}/bin, skipping any whose inputs did
# not change since the last build (a stamp file holds a hash of the tool
# module, the Go version and the flags). Go's own GOCACHE/GOMODCACHE are
# reused, so even a forced rebuild only relinks.
#
#   build-tools.sh [k8s] [etcd] [helm] [coredns]     (default: all)
#
# Env: SIGNET_CACHE_DIR, SIGNET_FORCE_BUILD=1 (ignore stamps),
#      SIGNET_GO_NICE (default 10), GOFLAGS/GOCACHE/GOMODCACHE as usual.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "go is not installed (Go >= 1.24 is needed to build the cluster binaries)"
export GOTOOLCHAIN=local CGO_ENABLED=0
go_nice="${SIGNET_GO_NICE:-10}"
mkdir -p "$BIN_DIR"
TOOLS="$E2E_CLUSTER_DIR/tools"
TIMINGS="$SIGNET_CACHE_DIR/build-timings.log"

# stamp_of DIR EXTRA...: hash of the module files, go version and extra inputs.
stamp_of() {
  local dir="$1"; shift
  { cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go 2>/dev/null; go version; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1
}

# build NAME MODULE_DIR STAMP OUTPUT PACKAGE [LDFLAGS]
build() {
  local name="$1" dir="$2" stamp="$3" out="$4" pkg="$5" ldflags="${6:-}"
  local stampfile="$BIN_DIR/.$name.stamp"
  if [ -z "${SIGNET_FORCE_BUILD:-}" ] && [ -x "$out" ] && [ "$(cat "$stampfile" 2>/dev/null)" = "$stamp" ]; then
    log "$name: up to date ($out)"
    return
  fi
  log "$name: building $pkg (this takes a while on a cold Go cache)"
  local start end
  start=$(date +%s)
  (cd "$dir" && nice -n "$go_nice" go build -mod=readonly -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg") \
    || die "$name: go build failed"
  mv -f "$out.tmp" "$out"
  echo "$stamp" > "$stampfile"
  end=$(date +%s)
  log "$name: built in $((end - start))s"
  echo "$(date -u +%FT%TZ) $name $((end - start))s" >> "$TIMINGS"
}

build_k8s() {
  local v="$K8S_VERSION" minor ldf build_date k
  minor="$(echo "$v" | cut -d. -f2)"
  # Version stamping as upstream's hack/lib/version.sh does; the module zip
  # carries no commit, so gitCommit stays empty. buildDate is the module's
  # publication time (deterministic).
  build_date="$(cd "$TOOLS/k8s" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\t"Info": "\(.*\)",$/\1/p' | xargs cat | sed -n 's/.*"Time":"\([^"]*\)".*/\1/p')"
  ldf=""
  for k in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X '$k.gitVersion=$v' -X '$k.gitMajor=1' -X '$k.gitMinor=$minor'"
    ldf+=" -X '$k.gitCommit=' -X '$k.gitTreeState=clean' -X '$k.buildDate=${build_date:-1970-01-01T00:00:00Z}'"
  done
  build k8s "$TOOLS/k8s" "$(stamp_of "$TOOLS/k8s" "$ldf")" "$BIN_DIR/k8s" . "$ldf"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    ln -sfn k8s "$BIN_DIR/$c"
  done
}

build_etcd() {
  local ldf="-X 'go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION'"
  build etcd "$TOOLS/etcd" "$(stamp_of "$TOOLS/etcd" "$ldf")" "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3 "$ldf"
}

build_helm() {
  local ldf="-X 'helm.sh/helm/v3/internal/version.version=$HELM_VERSION' -X 'helm.sh/helm/v3/internal/version.gitTreeState=clean'"
  build helm "$TOOLS/helm" "$(stamp_of "$TOOLS/helm" "$ldf")" "$BIN_DIR/helm" helm.sh/helm/v3/cmd/helm "$ldf"
}

build_coredns() {
  local ldf="-X 'github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION'"
  build coredns "$TOOLS/coredns" "$(stamp_of "$TOOLS/coredns" "$ldf")" "$BIN_DIR/coredns" . "$ldf"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(k8s etcd helm coredns)
for t in "${targets[@]}"; do
  case "$t" in
    k8s|etcd|helm|coredns) "build_$t" ;;
    *) die "unknown tool $t (k8s, etcd, helm, coredns)" ;;
  esac
done
