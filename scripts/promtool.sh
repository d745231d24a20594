#!/usr/bin/env bash
# Makes `promtool` available: the tests check the services' /metrics with
# it, and scripts/check-deploy.sh the alert rules and dashboard queries.
# It ships in Debian's `prometheus` package; only the binary is unpacked
# into .tools/bin (on PATH after `source scripts/env.sh`), so no Prometheus
# server is installed or started. Idempotent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

echo "promtool: unpacking it from Debian's prometheus package into .tools/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    # The package lists may be missing or stale.
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    (cd "$work" && apt-get download prometheus >/dev/null)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p .tools/bin
install -m 0755 "$work/root/usr/bin/promtool" .tools/bin/promtool
.tools/bin/promtool --version | head -n1
