#!/usr/bin/env bash
# Pushes short jobs through the real scheduler and workers while killing
# workers with SIGKILL again and again, restarting RabbitMQ and Postgres
# once each and making S3 unreachable, then audits every job and prints the
# figures (tools/src/bin/chaos.rs). Exits non-zero if a job was lost,
# duplicated, failed or stuck.
#
#   scripts/chaos.sh                 # 500 jobs, bounded at 15 minutes
#   scripts/chaos.sh 300 600         # 300 jobs, bounded at 600 s
#   scripts/chaos.sh --quick         # the CI preset: 80 jobs, under 3 minutes
#
# Any further flag goes to the driver (`--seed N`, `--workers N`, ...; see
# `target/debug/chaos --help`). It restarts the machine's shared Postgres
# and RabbitMQ, so never run it beside `cargo test`; whatever happens, both
# are started again when it exits.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

args=()
if [[ ${1:-} =~ ^[0-9]+$ ]]; then args+=(--jobs "$1"); shift; fi
if [[ ${1:-} =~ ^[0-9]+$ ]]; then args+=(--max-secs "$1"); shift; fi

scripts/services.sh >/dev/null
trap 'scripts/services.sh >/dev/null' EXIT

cargo build --quiet -p scheduler -p worker -p tools
target/debug/chaos "${args[@]}" "$@"
