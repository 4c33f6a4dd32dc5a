# Shared settings and helpers for the local e2e cluster scripts (sourced).
# shellcheck shell=bash

E2E_CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_CLUSTER_DIR/../.." && pwd)"
# shellcheck source=versions.env
. "$E2E_CLUSTER_DIR/versions.env"

SIGNET_CACHE_DIR="${SIGNET_CACHE_DIR:-$HOME/.cache/signet}"
SIGNET_E2E_DIR="${SIGNET_E2E_DIR:-/var/lib/signet-e2e}"
BIN_DIR="$SIGNET_CACHE_DIR/bin"

# Network layout. The pod and service ranges avoid 10.0.0.0/8 subnets commonly
# used by hosts and Docker's 172.17.0.0/16.
POD_CIDR="${SIGNET_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${SIGNET_SERVICE_CIDR:-10.96.0.0/24}"
FIRST_SERVICE_IP="10.96.0.1"
DNS_SERVICE_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
CNI_BRIDGE="signet0"
CNI_NETWORK="signet-e2e"

# Dedicated containerd: nothing of a system containerd is touched.
CONTAINERD_ROOT="$SIGNET_E2E_DIR/containerd/root"
CONTAINERD_STATE="/run/signet-e2e/containerd"
CONTAINERD_SOCK="/run/signet-e2e/containerd/containerd.sock"
# The standard kubelet directory, so charts' default hostPaths
# (/var/lib/kubelet/plugins_registry, /var/lib/kubelet/pods) work unchanged.
KUBELET_DIR="${SIGNET_KUBELET_DIR:-/var/lib/kubelet}"
PAUSE_IMAGE="localhost/signet/pause:dev"
COREDNS_IMAGE="localhost/signet/coredns:dev"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Node identity: the hostname lower-cased (valid DNS-1123 label), and the
# address of the interface holding the default route (or the first global one).
node_name() {
  local n
  n="$(hostname | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9.\n-' '-')"
  echo "${SIGNET_NODE_NAME:-$n}"
}
node_ip() {
  if [ -n "${SIGNET_NODE_IP:-}" ]; then echo "$SIGNET_NODE_IP"; return; fi
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
  [ -n "$ip" ] || ip="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)"
  [ -n "$ip" ] || die "cannot determine the node IP; set SIGNET_NODE_IP"
  echo "$ip"
}
