#!/usr/bin/env bash
# Makes a Docker engine available to the attest_docker tests, as root:
# installs Debian's docker.io (dockerd 20.10) and busybox-static (the static
# binary the test image is made of) if missing, and starts dockerd unless one
# already answers on /var/run/docker.sock. Idempotent; CI calls it before
# running the tests with SIGNET_REQUIRE_DOCKER=1.
#
# dockerd is started without touching the host network: the tests run their
# containers with `--network none`, so no bridge or iptables rules are
# needed (--bridge=none --iptables=false --ip6tables=false).
set -euo pipefail

SOCKET=/var/run/docker.sock
LOG=${SIGNET_DOCKERD_LOG:-/var/log/signet-dockerd.log}

server_answers() {
    # The server version, not just the client's.
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

if [ "$(id -u)" != 0 ]; then
    echo "setup-docker.sh: must run as root" >&2
    exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup-docker.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if server_answers; then
    echo "setup-docker.sh: dockerd already running: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
    exit 0
fi

# A stale socket from a dead daemon would make the wait below lie.
if [ -S "$SOCKET" ] && ! server_answers; then
    rm -f "$SOCKET"
fi

echo "setup-docker.sh: starting dockerd (log: $LOG)"
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$LOG" 2>&1 &
for _ in $(seq 1 60); do
    if server_answers; then
        echo "setup-docker.sh: dockerd ready: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
        exit 0
    fi
    sleep 0.5
done
echo "setup-docker.sh: dockerd did not become ready; last log lines:" >&2
tail -n 30 "$LOG" >&2
exit 1
