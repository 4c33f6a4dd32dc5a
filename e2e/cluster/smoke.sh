#!/usr/bin/env bash
# Smoke check of the local e2e cluster (after up.sh): node Ready; pods from the
# side-loaded pause and probe images run; a ClusterIP Service answers from the
# host and from a pod (by DNS name); CoreDNS resolves
# kubernetes.default.svc.cluster.local in a pod; TokenRequest + TokenReview
# (default and custom audiences); the kubelet's port 10250 accepts a
# service-account token with nodes/proxy RBAC (webhook authn/authz), verified
# against the cluster CA, and refuses one without it and anonymous requests.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
S="$SIGNET_E2E_DIR"
[ -f "$S/env" ] || die "no $S/env: is the cluster up (e2e/cluster/up.sh)?"
. "$S/env"
NODE="$SIGNET_E2E_NODE_NAME" NODE_IP="$SIGNET_E2E_NODE_IP" CA="$SIGNET_E2E_CA_FILE"
NS=signet-smoke
started_at=$(date +%s)
pass=0 fail=0
ok() { pass=$((pass + 1)); log "PASS $*"; }
bad() { fail=$((fail + 1)); log "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...
  local d="$1"; shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}

kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
cleanup() { kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

check "node $NODE Ready" \
  kubectl wait --for=condition=Ready "node/$NODE" --timeout=60s

kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: pause}
spec:
  containers:
    - {name: pause, image: $PAUSE_IMAGE, imagePullPolicy: Never}
---
# What a CSI node plugin needs: privileged, kubelet pods dir with Bidirectional propagation.
apiVersion: v1
kind: Pod
metadata: {name: privileged}
spec:
  containers:
    - name: pause
      image: $PAUSE_IMAGE
      imagePullPolicy: Never
      securityContext: {privileged: true}
      volumeMounts:
        - {name: pods, mountPath: /var/lib/kubelet/pods, mountPropagation: Bidirectional}
  volumes:
    - name: pods
      hostPath: {path: $KUBELET_DIR/pods, type: Directory}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  containers:
    - name: echo
      image: localhost/signet/probe:dev
      imagePullPolicy: Never
      args: [serve, "0.0.0.0:8080"]
      ports: [{containerPort: 8080}]
      readinessProbe:
        tcpSocket: {port: 8080}
        periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
EOF
check "pause pod Running (image $PAUSE_IMAGE)" \
  kubectl -n "$NS" wait --for=condition=Ready pod/pause --timeout=90s
check "privileged pod with a Bidirectional kubelet-dir mount Running" \
  kubectl -n "$NS" wait --for=condition=Ready pod/privileged --timeout=90s
check "echo pod Ready" \
  kubectl -n "$NS" wait --for=condition=Ready pod/echo --timeout=90s

svc_ip="$(kubectl -n "$NS" get service echo -o jsonpath='{.spec.clusterIP}')"
from_host() {
  local i line
  for i in $(seq 1 20); do
    line="$(timeout 5 bash -c "exec 3<>/dev/tcp/$svc_ip/80 && head -n1 <&3" 2>/dev/null || true)"
    if [[ "$line" == "signet-probe echo" ]]; then return 0; fi
    sleep 1
  done
  echo "got: '$line'" >&2
  return 1
}
check "ClusterIP $svc_ip:80 reachable from the host (kube-proxy)" from_host

# run_pod NAME ARGS...: runs the probe image to completion, prints its log.
run_pod() {
  local name="$1"; shift
  local args="" a
  for a in "$@"; do args+="\"$a\", "; done
  kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  containers:
    - name: probe
      image: localhost/signet/probe:dev
      imagePullPolicy: Never
      args: [${args%, }]
EOF
  local phase="" i
  for i in $(seq 1 90); do
    phase="$(kubectl -n "$NS" get pod "$name" -o jsonpath='{.status.phase}')"
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 1
  done
  kubectl -n "$NS" logs "$name" 2>&1 || true
  [ "$phase" = Succeeded ]
}

if kubectl -n kube-system get deployment coredns >/dev/null 2>&1; then
  out="$(run_pod dns dns "kubernetes.default.svc.$CLUSTER_DOMAIN")" || true
  check "DNS in a pod: $out" grep -q " $FIRST_SERVICE_IP" <<<"$out"
  out="$(run_pod svc tcp "echo.$NS.svc:80")" || true
  check "Service by DNS name from a pod: $out" grep -q "signet-probe echo" <<<"$out"
else
  log "SKIP DNS checks (CoreDNS not deployed)"
fi

# TokenRequest + TokenReview.
token_review() { # token_review TOKEN [AUDIENCE]
  local aud=""
  [ -z "${2:-}" ] || aud="audiences: [\"$2\"]"
  kubectl create -o jsonpath='{.status.authenticated} {.status.user.username} {.status.audiences}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec:
  token: "$1"
  $aud
EOF
}
tok="$(kubectl -n "$NS" create token default --duration=10m)"
out="$(token_review "$tok")"
check "TokenReview of a default-audience token: $out" grep -q "^true system:serviceaccount:$NS:default" <<<"$out"
tok="$(kubectl -n "$NS" create token default --audience=signet-smoke --duration=10m)"
out="$(token_review "$tok" signet-smoke)"
check "TokenReview of a custom-audience token: $out" grep -q '^true .*signet-smoke' <<<"$out"
out="$(token_review "$tok" other-audience)"
# (status.authenticated is omitted when false)
check "TokenReview refuses the wrong audience: '$out'" test "${out%% *}" != true

# Kubelet API with a service-account token (webhook authentication/authorization).
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: kubelet-reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: signet-smoke-kubelet-reader}
rules:
  - {apiGroups: [""], resources: [nodes/proxy], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: signet-smoke-kubelet-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: signet-smoke-kubelet-reader}
subjects:
  - {kind: ServiceAccount, name: kubelet-reader, namespace: $NS}
EOF
reader="$(kubectl -n "$NS" create token kubelet-reader --duration=10m)"
kubelet_get() { # kubelet_get TOKEN -> HTTP status, body in /tmp
  local auth=()
  [ -z "$1" ] || auth=(-H "Authorization: Bearer $1")
  curl -sS -o "$S/smoke-kubelet.json" -w '%{http_code}' --cacert "$CA" \
    --resolve "$NODE:10250:$NODE_IP" "${auth[@]}" "https://$NODE:10250/pods"
}
kubelet_ok() {
  local i code
  for i in $(seq 1 15); do # RBAC changes reach the kubelet's authorizer quickly, but not instantly
    code="$(kubelet_get "$reader")"
    if [ "$code" = 200 ] && grep -q '"name":"echo"' "$S/smoke-kubelet.json"; then return 0; fi
    sleep 1
  done
  echo "HTTP $code: $(head -c 300 "$S/smoke-kubelet.json")" >&2
  return 1
}
check "kubelet https://$NODE:10250/pods with a nodes/proxy token (CA-verified)" kubelet_ok
code="$(kubelet_get "$(kubectl -n "$NS" create token default --duration=10m)")"
check "kubelet refuses a token without nodes/proxy (HTTP $code)" test "$code" = 403
code="$(kubelet_get "")"
check "kubelet refuses anonymous requests (HTTP $code)" test "$code" = 401
kubectl delete clusterrole,clusterrolebinding signet-smoke-kubelet-reader >/dev/null 2>&1 || true

echo "smoke: $pass passed, $fail failed ($(( $(date +%s) - started_at ))s)"
[ "$fail" = 0 ]
