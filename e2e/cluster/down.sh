#!/usr/bin/env bash
# Stops the local e2e cluster started by up.sh and removes what it left on the
# host: the kubelet first, then every pod through the CRI (so CNI tears the
# pod networks down), containerd and its shims, kube-proxy, the control plane
# and etcd; then unmounts everything under the kubelet and containerd
# directories, removes the CNI bridge, the iptables rules and chains the
# cluster created and the kubepods cgroups. Idempotent. Logs and certificates
# stay in $SIGNET_E2E_DIR until the next up.sh.
#
# Exit status 1 (with a list) when a process or mount is left behind.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "down.sh must run as root"
S="$SIGNET_E2E_DIR"
PIDS="$S/pids"
started_at=$(date +%s)

# Is PID still one of ours? (guards against PID reuse)
ours() { # ours PID NAME-PATTERN
  local cmd
  cmd="$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$2"* ]]
}

# stop NAME PATTERN [TIMEOUT]: SIGTERM, then SIGKILL after TIMEOUT seconds.
stop() {
  local name="$1" pattern="$2" timeout="${3:-15}" pid i
  [ -f "$PIDS/$name.pid" ] || return 0
  pid="$(cat "$PIDS/$name.pid")"
  if kill -0 "$pid" 2>/dev/null && ours "$pid" "$pattern"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < timeout * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${timeout}s, killing it"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# PIDs of processes whose command line mentions our containerd socket
# (the containerd-shim-runc-v2 processes of our containerd).
our_shims() {
  local d
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK "; then
      echo "${d#/proc/}"
    fi
  done
}

# 1. kubelet first, so it does not restart what we remove.
stop kubelet "$BIN_DIR/kubelet" 30

# 2. pods and containers, through the CRI, while containerd still runs.
if [ -S "$CONTAINERD_SOCK" ] && [ -f "$PIDS/containerd.pid" ] && kill -0 "$(cat "$PIDS/containerd.pid")" 2>/dev/null; then
  log "removing pods through the CRI"
  if [ -x "$BIN_DIR/k8s" ]; then
    timeout 150 "$BIN_DIR/k8s" cri-reset "unix://$CONTAINERD_SOCK" >&2 || log "cri-reset reported errors; falling back to ctr"
  fi
  # Whatever is still there (cri-reset failed or unavailable): kill the tasks.
  for ns in k8s.io default; do
    for t in $(ctr -a "$CONTAINERD_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr -a "$CONTAINERD_SOCK" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
    done
    sleep 0.5
    for t in $(ctr -a "$CONTAINERD_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr -a "$CONTAINERD_SOCK" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1
    done
    for c in $(ctr -a "$CONTAINERD_SOCK" -n "$ns" containers ls -q 2>/dev/null); do
      ctr -a "$CONTAINERD_SOCK" -n "$ns" containers delete "$c" >/dev/null 2>&1
    done
  done
fi

# 3. containerd, then any shim of ours still alive.
stop containerd "containerd --config $S/config/containerd.toml" 20
for pid in $(our_shims); do
  log "killing leftover shim $pid"
  kill -KILL "$pid" 2>/dev/null
done

# 4. kube-proxy, control plane, etcd.
stop kube-proxy "$BIN_DIR/kube-proxy" &
stop kube-scheduler "$BIN_DIR/kube-scheduler" &
stop kube-controller-manager "$BIN_DIR/kube-controller-manager" &
wait
stop kube-apiserver "$BIN_DIR/kube-apiserver" 20
stop etcd "$BIN_DIR/etcd" 20

# Processes inside containers whose shim was killed (should be none).
for cg in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods.slice /sys/fs/cgroup/kubepods; do
  [ -d "$cg" ] || continue
  find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r pid; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null && log "killed leftover container process $pid"
  done
done

# 5. mounts under our directories (deepest first), network namespaces we created.
unmount_under() { # unmount_under DIR...
  local dir m
  for dir in "$@"; do
    [ -n "$dir" ] || continue
    awk '{print $5}' /proc/self/mountinfo | sed 's/\\040/ /g' \
      | awk -v d="$dir" '$0 == d || index($0, d "/") == 1' | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
      done
  done
}
unmount_under "$KUBELET_DIR" "$CONTAINERD_ROOT" "$CONTAINERD_STATE" /run/signet-e2e "$S"
if [ -d /run/netns ]; then
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    if ! grep -qx "$(basename "$ns")" "$S/netns-before" 2>/dev/null; then
      umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null
      rm -f "$ns"
    fi
  done
fi

[ -f "$S/netns-dir-created" ] && rmdir /run/netns 2>/dev/null

# 6. network: bridge, iptables rules and chains.
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  log "removing bridge $CNI_BRIDGE"
  ip link delete "$CNI_BRIDGE" 2>/dev/null
fi
if [ -x "$BIN_DIR/kube-proxy" ] && iptables -t nat -S 2>/dev/null | grep -q '^-N KUBE-'; then
  "$BIN_DIR/kube-proxy" --cleanup --v=0 >/dev/null 2>&1 || true
fi
clean_iptables() { # clean_iptables iptables|ip6tables
  local ipt="$1" table rule chain
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle; do
    # Rules of ours in any chain: jumps to KUBE-* chains, and CNI rules that
    # name our network, bridge or pod range.
    "$ipt" -t "$table" -S 2>/dev/null \
      | grep -E '^-A ' \
      | grep -E -- "-j KUBE-|$CNI_NETWORK|$CNI_BRIDGE|${POD_CIDR%/*}" \
      | while read -r rule; do
          eval "$ipt -t $table ${rule/-A /-D }" 2>/dev/null
        done
    # KUBE-* chains (kubelet, kube-proxy) are only ever ours on this host.
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
      "$ipt" -t "$table" -F "$chain" 2>/dev/null
    done
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
      "$ipt" -t "$table" -X "$chain" 2>/dev/null
    done
    # CNI chains (firewall/portmap plugins) that did not exist before up.sh:
    # every jump to them goes, then the chains.
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(CNI-[^ ]*\)$/\1/p'); do
      grep -qx "$chain" "$S/cni-chains-before" 2>/dev/null && continue
      "$ipt" -t "$table" -F "$chain" 2>/dev/null
    done
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(CNI-[^ ]*\)$/\1/p'); do
      grep -qx "$chain" "$S/cni-chains-before" 2>/dev/null && continue
      "$ipt" -t "$table" -S 2>/dev/null | grep -E "^-A .* -j $chain( |$)" | while read -r rule; do
        eval "$ipt -t $table ${rule/-A /-D }" 2>/dev/null
      done
      "$ipt" -t "$table" -X "$chain" 2>/dev/null
    done
  done
}
clean_iptables iptables
clean_iptables ip6tables

# 7. CNI state, cgroups, runtime directories.
rm -rf "$S/cni/ipam" /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null
rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null # only when empty
for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$root" ] || continue
  find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# containerd 1.6 puts shim sockets and ctr fifos under /run/containerd whatever
# its state dir; remove those directories when empty (never a system
# containerd's files).
rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null
rm -rf /run/signet-e2e "$CONTAINERD_ROOT" "$S/containerd" "$S/etcd" 2>/dev/null
if [ -f "$KUBELET_DIR/.signet-e2e" ] && ! awk '{print $5}' /proc/self/mountinfo | grep -q "^$KUBELET_DIR"; then
  rm -rf "$KUBELET_DIR"
fi

# 8. check: nothing of ours may be left.
left=0
mounts="$(awk '{print $5}' /proc/self/mountinfo | grep -E "^($KUBELET_DIR|$S|/run/signet-e2e|$CONTAINERD_ROOT)(/|$)")"
if [ -n "$mounts" ]; then
  log "mounts left behind:"; echo "$mounts" >&2; left=1
fi
procs=""
for d in /proc/[0-9]*; do
  pid="${d#/proc/}"
  [ "$pid" = $$ ] && continue
  cmd="$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" || continue
  case "$cmd" in
    *"$CONTAINERD_SOCK"*|*"$S/"*|"$BIN_DIR/"*) procs+="$pid $cmd"$'\n' ;;
  esac
done
if [ -n "$procs" ]; then
  log "processes left behind:"; printf '%s' "$procs" >&2; left=1
fi
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then log "bridge $CNI_BRIDGE left behind"; left=1; fi
if [ "$left" = 0 ]; then
  log "cluster down in $(( $(date +%s) - started_at ))s; no processes or mounts left"
fi
exit "$left"
