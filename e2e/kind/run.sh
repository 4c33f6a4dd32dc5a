#!/usr/bin/env bash
# `make e2e-kind`: the cluster suite on a kind cluster, for machines with
# Docker and kind (https://kind.sigs.k8s.io). Not run in this repository's
# CI, whose machines cannot pull kind's node image.
#
#   e2e/kind/run.sh            create the cluster (kept if it exists), load
#                              the images, run the suite
#   KEEP=1 e2e/kind/run.sh     leave the cluster running afterwards
#
# Env: KIND_CLUSTER (signet-e2e), KIND_NODE_IMAGE (kind's default), CARGO.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-signet-e2e}"
command -v kind >/dev/null || { echo "kind is not installed" >&2; exit 1; }
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
kubeconfig="$(mktemp)"
trap 'rm -f "$kubeconfig"; [ -n "${KEEP:-}" ] || kind delete cluster --name "$cluster"' EXIT
kind get kubeconfig --name "$cluster" > "$kubeconfig"

# Images as OCI archives (no Docker build), loaded into every node.
SIGNET_IMPORT=0 bash "$repo/e2e/images/build-all.sh" \
    signet-operator signet-agent signet-csi signet-mtls-example signet-pause signet-probe |
  while read -r _bin _image tar; do
    kind load image-archive --name "$cluster" "$tar"
  done

node="$(kind get nodes --name "$cluster" | head -n1)"
cd "$repo"
# kind's kubelets serve self-signed certificates; hostPath directories the
# tests read live in the node container.
KUBECONFIG="$kubeconfig" SIGNET_E2E_CLUSTER=1 SIGNET_E2E_KIND_NODE="$node" \
  SIGNET_E2E_NODE_NAME="$node" SIGNET_E2E_HELM_SET="agent.kubelet.skipVerify=true" \
  "${CARGO:-cargo}" test -p signet-e2e --test cluster_helm --test cluster_operator -- --nocapture --test-threads 1
