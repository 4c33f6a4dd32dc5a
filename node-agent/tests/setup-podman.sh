#!/usr/bin/env bash
# Makes Podman available to the attest_podman tests, as root: installs
# Debian's podman (4.3) and busybox-static (the static binary the test image
# is made of) if missing. No daemon is started here: each test starts its
# own `podman system service` by socket activation. Idempotent; CI calls it
# before running the tests with SIGNET_REQUIRE_PODMAN=1.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup-podman.sh: must run as root" >&2
    exit 1
fi

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup-podman.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "setup-podman.sh: $(podman --version)"
