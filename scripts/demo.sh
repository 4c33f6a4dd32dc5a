#!/usr/bin/env bash
# `make demo`: Signet on this machine without Kubernetes. Starts
# signet-operator (standalone) and signet-agent in a temporary directory,
# fetches SVIDs through the SPIFFE Workload API with the agent's CLI, and
# shows the audit trail. Everything stops when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${SIGNET_DEMO_PORT:-18443}"
# `scripts/demo.sh standalone` (make standalone): start the stack and keep
# it in the foreground until Ctrl-C instead of running the walkthrough.
MODE="${1:-demo}"
cargo build -q -p signet-operator -p signet-agent -p signet-example-mtls
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

if [ "$MODE" = standalone ]; then
  step "running (Ctrl-C stops both and removes $DIR)"
  echo "export SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET"
  echo "then e.g.: $BIN/signet-agent api fetch x509"
  echo "policy: examples/standalone/policy (edits are picked up live)"
  echo "audit log: $DIR/audit.log, logs: $DIR/operator.log $DIR/agent.log"
  wait
  exit 0
fi

step "X.509-SVID for this process (uid $(id -u))"
"$BIN/signet-agent" api fetch x509 --write "$DIR/svid"
ls -l "$DIR/svid"

step "JWT-SVID for audience 'demo', then validated by the agent"
token="$("$BIN/signet-agent" api fetch jwt --audience demo --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["svids"][0]["svid"])')"
echo "${token:0:60}..."
"$BIN/signet-agent" api validate jwt --audience demo --svid "$token"

# The second workload: another uid when we can switch to one.
as_client=()
client_id="spiffe://example.org/demo/demo/uid/$(id -u)"
server_id="$client_id"
if [ "$(id -u)" = 0 ]; then
  server_id="spiffe://example.org/demo/demo/admin"
  if command -v setpriv >/dev/null; then
    as_client=(setpriv --reuid 65534 --regid 65534 --clear-groups)
    client_id="spiffe://example.org/demo/demo/uid/65534"
    step "the same request from uid 65534 gets a different identity"
    "${as_client[@]}" "$BIN/signet-agent" api fetch x509 | grep -i "spiffe id"
  else
    client_id="$server_id"
  fi
fi

step "two workloads talk mTLS with their SVIDs"
MTLS_PORT="$((PORT + 1))"
"$BIN/signet-mtls-example" server --listen "127.0.0.1:$MTLS_PORT" --allow "$client_id" --connections 1 >"$DIR/server.out" &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 100); do grep -q listening "$DIR/server.out" && break; sleep 0.1; done
echo "server ($server_id) accepts only $client_id"
echo -n "client ($client_id) got: "
"${as_client[@]}" "$BIN/signet-mtls-example" client --connect "127.0.0.1:$MTLS_PORT" --server-id "$server_id"
wait "$server_pid" || true
cat "$DIR/server.out"

step "audit log: one JSON line per issuance ($DIR/audit.log, abridged)"
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    print(e["time"], e["event"], e["credential"], e.get("workload_identity", "-"), e.get("spiffe_id", "-"))
' "$DIR/audit.log"
