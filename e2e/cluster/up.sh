#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine (root needed):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a dedicated
# containerd (Debian's), the kubelet, kube-proxy (iptables) and CoreDNS, all as
# background processes with certificates generated for the run. Nothing is
# pulled: the sandbox (pause) and CoreDNS images are built locally.
#
#   e2e/cluster/up.sh            then: export KUBECONFIG=$SIGNET_E2E_DIR/admin.kubeconfig
#
# Each run starts a fresh cluster (state from an earlier run is wiped); when
# the cluster is already up and healthy it only prints the environment.
# State, logs and certificates: ${SIGNET_E2E_DIR:-/var/lib/signet-e2e}.
# Binaries: ${SIGNET_CACHE_DIR:-~/.cache/signet}/bin (built by build-tools.sh).
# The environment for tests is written to $SIGNET_E2E_DIR/env (sourceable).
#
# Env: SIGNET_NODE_NAME, SIGNET_NODE_IP, SIGNET_KUBELET_DIR (/var/lib/kubelet),
#      SIGNET_SKIP_APT=1, SIGNET_SKIP_DNS=1, SIGNET_UP_TIMEOUT (seconds per wait, 180).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "up.sh must run as root (it starts containerd and the kubelet)"
started_at=$(date +%s)
NODE="$(node_name)"
NODE_IP="$(node_ip)"
S="$SIGNET_E2E_DIR"
PKI="$S/pki"
LOGS="$S/logs"
PIDS="$S/pids"
CFG="$S/config"
WAIT="${SIGNET_UP_TIMEOUT:-180}"
export PATH="$BIN_DIR:$PATH"

# --- helpers -------------------------------------------------------------------

tail_log() { # tail_log NAME...
  local n
  for n in "$@"; do
    [ -f "$LOGS/$n.log" ] || continue
    echo "----- last lines of $LOGS/$n.log -----" >&2
    tail -n 40 "$LOGS/$n.log" >&2
  done
}

# wait_for DESCRIPTION TIMEOUT LOGS... -- COMMAND...
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local logs=()
  while [ "$1" != "--" ]; do logs+=("$1"); shift; done
  shift
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    local p
    for p in "${logs[@]}"; do
      if [ -f "$PIDS/$p.pid" ] && ! kill -0 "$(cat "$PIDS/$p.pid")" 2>/dev/null; then
        tail_log "$p"
        die "$p exited while waiting for $what (log: $LOGS/$p.log)"
      fi
    done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail_log "${logs[@]}"
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 1
  done
  log "$what: ok ($(( $(date +%s) - started_at ))s since start)"
}

# start NAME BINARY ARGS...: runs a process in its own session (so it outlives
# this script and its caller's process group), logging to $LOGS/NAME.log.
start() {
  local name="$1"; shift
  log "starting $name"
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
}

running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

kc() { kubectl --kubeconfig "$S/admin.kubeconfig" "$@"; }

write_env() {
  cat > "$S/env" <<EOF
export KUBECONFIG=$S/admin.kubeconfig
export SIGNET_E2E_DIR=$S
export SIGNET_E2E_NODE_NAME=$NODE
export SIGNET_E2E_NODE_IP=$NODE_IP
export SIGNET_E2E_CA_FILE=$PKI/ca.crt
export SIGNET_E2E_KUBELET_DIR=$KUBELET_DIR
export SIGNET_CONTAINERD_SOCK=$CONTAINERD_SOCK
export SIGNET_E2E_BIN_DIR=$BIN_DIR
export PATH=$BIN_DIR:\$PATH
EOF
}

# --- already up? ----------------------------------------------------------------

if running kubelet && running kube-apiserver && [ -f "$S/admin.kubeconfig" ] \
  && kc get --raw /readyz >/dev/null 2>&1; then
  log "cluster already running (node $NODE); run down.sh first for a fresh one"
  write_env
  echo "export KUBECONFIG=$S/admin.kubeconfig"
  exit 0
fi

# Leftovers of an earlier run (crashed or never stopped) are cleaned first.
if [ -d "$S" ] || [ -d /run/signet-e2e ]; then
  log "cleaning up state of an earlier run"
  "$E2E_CLUSTER_DIR/down.sh" >&2 || die "down.sh could not clean up the earlier run"
fi

# --- host dependencies ------------------------------------------------------------

if [ -z "${SIGNET_SKIP_APT:-}" ]; then
  pkgs=(containerd runc containernetworking-plugins iptables conntrack openssl curl iproute2 util-linux mount kmod procps)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # containerd's package starts its own service; ours is separate, leave it be.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi
for b in containerd containerd-shim-runc-v2 runc ctr iptables openssl curl; do
  command -v "$b" >/dev/null || die "$b not found (install Debian's package, or unset SIGNET_SKIP_APT)"
done
[ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge missing (Debian package containernetworking-plugins)"

# --- binaries and images ---------------------------------------------------------

"$E2E_CLUSTER_DIR/build-tools.sh" k8s etcd coredns helm
for b in k8s etcd coredns helm; do [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing after build"; done
images_out="$(SIGNET_IMPORT=0 "$REPO_ROOT/e2e/images/build-all.sh" signet-pause signet-probe < /dev/null)"
PAUSE_TAR="$SIGNET_CACHE_DIR/images/pause_dev.tar"
PROBE_TAR="$SIGNET_CACHE_DIR/images/probe_dev.tar"
[ -f "$PAUSE_TAR" ] || die "pause image not built: $images_out"
COREDNS_TAR="$SIGNET_CACHE_DIR/images/coredns_dev.tar"
"$REPO_ROOT/e2e/images/build-image.sh" --name "$COREDNS_IMAGE" --binary "$BIN_DIR/coredns" \
  --entrypoint /coredns --output "$COREDNS_TAR"

# --- kernel and host setup ---------------------------------------------------------

if command -v modprobe >/dev/null; then modprobe -q overlay 2>/dev/null || true; modprobe -q br_netfilter 2>/dev/null || true; fi
[ -d /proc/sys/net/bridge ] || die "bridge netfilter (br_netfilter) is not available in this kernel"
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
grep -qw overlay /proc/filesystems || die "overlayfs is not available in this kernel"
for c in cpu cpuacct cpuset memory pids; do
  if [ ! -d "/sys/fs/cgroup/$c" ] && ! grep -qw "$c" /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    die "cgroup controller $c is not mounted (the kubelet needs cpu, cpuacct, cpuset, memory, pids)"
  fi
done
if [ -d "$KUBELET_DIR" ] && [ ! -f "$KUBELET_DIR/.signet-e2e" ] && [ -n "$(ls -A "$KUBELET_DIR")" ]; then
  die "$KUBELET_DIR exists and was not created by up.sh (another kubelet?); set SIGNET_KUBELET_DIR"
fi
for port in 2379 2380 6443 10250 10248 10249 10256 10257 10259; do
  if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    die "port $port is already in use: $(ss -Hltnp "sport = :$port" | head -1)"
  fi
done

rm -rf "$S"
mkdir -p "$PKI" "$LOGS" "$PIDS" "$CFG" "$S/etcd" "$S/cni/net.d" "$S/cni/ipam" \
  "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$KUBELET_DIR"
chmod 700 "$S" "$PKI"
touch "$KUBELET_DIR/.signet-e2e" # lets down.sh remove the directory
# Netns mounts that exist before we start are never touched by down.sh.
ls /run/netns 2>/dev/null | grep '^cni-' > "$S/netns-before" || true
[ -d /run/netns ] || touch "$S/netns-dir-created"
# Likewise CNI iptables chains that exist before we start (another CNI user's).
{ iptables-save; ip6tables-save; } 2>/dev/null | sed -n 's/^:\(CNI-[^ ]*\) .*/\1/p' | sort -u > "$S/cni-chains-before" || true
# Bidirectional mount propagation (CSI drivers) needs the kubelet directory on
# a shared mount; / is private on this kind of VM, so the directory is bound
# onto itself and made rshared (undone by down.sh).
if [ "$(findmnt -n -o TARGET --target "$KUBELET_DIR")" != "$KUBELET_DIR" ]; then
  mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
fi
mount --make-rshared "$KUBELET_DIR"

# --- certificates -----------------------------------------------------------------

log "generating certificates for node $NODE ($NODE_IP)"
ossl() { openssl "$@" 2>>"$LOGS/openssl.log"; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=signet-e2e-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# cert NAME SUBJECT EXTKEYUSAGE [SANS] [CA]
cert() {
  local name="$1" subj="$2" eku="$3" sans="${4:-}" ca="${5:-ca}"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } > "$ext"
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/$name.key" \
    -out "$PKI/$name.csr" -subj "$subj"
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}
cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE,IP:127.0.0.1,IP:$NODE_IP,IP:$FIRST_SERVICE_IP"
cert admin "/O=system:masters/CN=signet-e2e-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert kubelet-client "/O=system:nodes/CN=system:node:$NODE" clientAuth
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE" serverAuth \
  "DNS:$NODE,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
# Front-proxy (request header) CA: lets the apiserver proxy to aggregated APIs
# and gives the controller manager and scheduler a complete authentication
# configuration.
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -keyout "$PKI/front-proxy-ca.key" -out "$PKI/front-proxy-ca.crt" -subj "/CN=signet-e2e-front-proxy-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

# kubeconfig NAME CERT
kubeconfig() {
  cat > "$S/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: signet-e2e
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: signet-e2e
  context: {cluster: signet-e2e, user: $1}
current-context: signet-e2e
EOF
  chmod 600 "$S/$1.kubeconfig"
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy
kubeconfig kubelet kubelet-client

# --- etcd and control plane -----------------------------------------------------------

start etcd "$BIN_DIR/etcd" --name signet-e2e --data-dir "$S/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster signet-e2e=http://127.0.0.1:2380 \
  --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
wait_for "etcd health" "$WAIT" etcd -- curl -fsS http://127.0.0.1:2379/health

start kube-apiserver "$BIN_DIR/kube-apiserver" \
  --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
  --etcd-servers=http://127.0.0.1:2379 \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --authorization-mode=Node,RBAC \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --profiling=false --v=1
wait_for "kube-apiserver /readyz" "$WAIT" kube-apiserver etcd -- kc get --raw /readyz

start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
  --kubeconfig="$S/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$S/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$S/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --use-service-account-credentials=true --controllers='*' \
  --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
  --profiling=false --v=1

cat > "$CFG/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $S/scheduler.kubeconfig}
leaderElection: {leaderElect: false}
EOF
start kube-scheduler "$BIN_DIR/kube-scheduler" --config="$CFG/scheduler.yaml" \
  --authentication-kubeconfig="$S/scheduler.kubeconfig" \
  --authorization-kubeconfig="$S/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --profiling=false --v=1

# --- containerd, CNI, images -------------------------------------------------------------

cat > "$S/cni/net.d/10-signet-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
cat > "$CFG/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"

[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root on these VMs lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj: runc fails with "failed to update /proc/self/oom_score_adj:
  # Permission denied" for pod sandboxes (-998) and Guaranteed pods (-997).
  # This clamps every container's score to containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "/run/signet-e2e/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
    max_conf_num = 1
EOF
start containerd containerd --config "$CFG/containerd.toml" --log-level warn
wait_for "containerd socket" 60 containerd -- ctr -a "$CONTAINERD_SOCK" version
for t in "$PAUSE_TAR" "$PROBE_TAR" "$COREDNS_TAR"; do
  ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$t" >>"$LOGS/images.log" 2>&1 \
    || { tail -n 20 "$LOGS/images.log" >&2; die "importing $t failed"; }
done
ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE" \
  || die "$PAUSE_IMAGE not found in containerd after import"

# --- kubelet and kube-proxy ------------------------------------------------------------------

resolv=/etc/resolv.conf
if grep -qE '^nameserver 127\.' /etc/resolv.conf && [ -f /run/systemd/resolve/resolv.conf ]; then
  resolv=/run/systemd/resolve/resolv.conf
fi
dns_cfg=""
if [ -z "${SIGNET_SKIP_DNS:-}" ]; then
  dns_cfg="clusterDNS: [$DNS_SERVICE_IP]"
fi
cat > "$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 30s}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 30s, cacheUnauthorizedTTL: 10s}
clusterDomain: $CLUSTER_DOMAIN
$dns_cfg
resolvConf: $resolv
# No registry to pull from: side-loaded images must never be garbage collected,
# and a nearly full CI disk must not evict the test pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
serializeImagePulls: false
# See restrict_oom_score_adj above: the kubelet cannot lower its own score either.
oomScoreAdj: 0
maxPods: 110
EOF
start kubelet "$BIN_DIR/kubelet" --config="$CFG/kubelet.yaml" \
  --kubeconfig="$S/kubelet.kubeconfig" --root-dir="$KUBELET_DIR" \
  --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1

cat > "$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $S/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$BIN_DIR/kube-proxy" --config="$CFG/kube-proxy.yaml" --v=1

node_ready() { [ "$(kc get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_for "node $NODE Ready" "$WAIT" kubelet containerd kube-apiserver kube-controller-manager kube-proxy -- node_ready
wait_for "kube-proxy healthz" 60 kube-proxy -- curl -fsS http://127.0.0.1:10256/healthz
# The default service account exists once the controller manager has run.
wait_for "default service account" 60 kube-controller-manager -- kc -n default get serviceaccount default

# --- DNS -----------------------------------------------------------------------------------

if [ -z "${SIGNET_SKIP_DNS:-}" ]; then
  sed -e "s#@COREDNS_IMAGE@#$COREDNS_IMAGE#" -e "s#@DNS_SERVICE_IP@#$DNS_SERVICE_IP#" \
    -e "s#@CLUSTER_DOMAIN@#$CLUSTER_DOMAIN#" "$E2E_CLUSTER_DIR/manifests/coredns.yaml" \
    | kc apply -f - >&2
  wait_for "CoreDNS available" "$WAIT" kubelet -- kc -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
fi

# Service IPs are only ever DNAT'ed by kube-proxy. A connection to one that
# kube-proxy has not programmed yet (a Service created a moment ago) must
# fail as it would in any cluster, not follow the default route off the
# machine: this sandbox's egress proxy answers any address there with TLS
# and 404, and the API server's aggregator once kept such a connection
# open for minutes. Routing the Service CIDR to the bridge keeps it local.
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  ip route replace "$SERVICE_CIDR" dev "$CNI_BRIDGE"
else
  log "no $CNI_BRIDGE bridge yet; Service CIDR $SERVICE_CIDR left on the default route"
fi

write_env
log "cluster up in $(( $(date +%s) - started_at ))s: node $NODE ($NODE_IP), state in $S"
echo "export KUBECONFIG=$S/admin.kubeconfig"
