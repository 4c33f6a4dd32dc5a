#!/usr/bin/env bash
# `make demo`: Signet on this machine without Kubernetes. Starts
# signet-operator (standalone) and signet-agent in a temporary directory,
# fetches SVIDs through the SPIFFE Workload API with the agent's CLI, and
# shows the audit trail. Everything stops when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${SIGNET_DEMO_PORT:-18443}"
KEEP="${SIGNET_DEMO_KEEP:-}"   # set to keep both running until Ctrl-C
cargo build -q -p signet-operator -p signet-agent
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

DIR="$(mktemp -d /tmp/signet-demo.XXXXXX)"
chmod 0755 "$DIR"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a join token for the agent"
"$BIN/signet-operator" token generate --name demo --out "$DIR/join-token"

step "signet-operator standalone (policy: examples/standalone/policy)"
"$BIN/signet-operator" standalone \
  --trust-domain example.org \
  --policy-dir examples/standalone/policy \
  --state-dir "$DIR/operator" \
  --listen "127.0.0.1:$PORT" \
  --audit-log "$DIR/audit.log" \
  --join-token-file "demo=$DIR/join-token" 2>"$DIR/operator.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$DIR/operator/bundle.pem" ] && break; sleep 0.1; done
[ -s "$DIR/operator/bundle.pem" ] || { cat "$DIR/operator.log"; exit 1; }
echo "issuer on 127.0.0.1:$PORT, trust bundle in $DIR/operator/bundle.pem"

step "signet-agent (unix attestor, Workload API on $DIR/agent.sock)"
cat >"$DIR/agent.yaml" <<YAML
trust_domain: example.org
issuer:
  address: 127.0.0.1:$PORT
  trust_bundle_path: $DIR/operator/bundle.pem
  join_token_path: $DIR/join-token
state_dir: $DIR/agent
listen: unix://$DIR/agent.sock
socket_mode: 0666
attestors: {unix: {}}
YAML
"$BIN/signet-agent" run --config "$DIR/agent.yaml" 2>"$DIR/agent.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$DIR/agent.sock" ] && break; sleep 0.1; done
[ -S "$DIR/agent.sock" ] || { cat "$DIR/agent.log"; exit 1; }
export SPIFFE_ENDPOINT_SOCKET="unix://$DIR/agent.sock"

step "X.509-SVID for this process (uid $(id -u))"
"$BIN/signet-agent" api fetch x509 --write "$DIR/svid"
ls -l "$DIR/svid"

step "JWT-SVID for audience 'demo', then validated by the agent"
token="$("$BIN/signet-agent" api fetch jwt --audience demo --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["svids"][0]["svid"])')"
echo "${token:0:60}..."
"$BIN/signet-agent" api validate jwt --audience demo --svid "$token"

if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  step "the same request from uid 65534 gets a different identity"
  setpriv --reuid 65534 --regid 65534 --clear-groups "$BIN/signet-agent" api fetch x509 | grep -i "spiffe id"
fi

step "audit log ($DIR/audit.log)"
cat "$DIR/audit.log"

if [ -n "$KEEP" ]; then
  step "running; SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET (Ctrl-C to stop)"
  wait
fi
