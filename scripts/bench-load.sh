#!/usr/bin/env bash
# Measures the job system's plumbing on the real binaries with `probe` jobs,
# which workers answer without rendering (tools/src/bin/bench-load.rs):
# submissions per second over the queue and over HTTP, end-to-end latency
# percentiles, and where the time goes. Prints figures; asserts and saves
# nothing. Release build, since a benchmark of a debug build measures the
# wrong program.
#
#   scripts/bench-load.sh                        # 2000 + 2000 jobs, then 20/s for 20 s
#   scripts/bench-load.sh --queue-jobs 500 --http-jobs 500 --workers 2
#
# Flags go to the driver (see `target/release/bench-load --help`). It uses
# its own schema, vhost and S3 server, and restarts nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

scripts/services.sh >/dev/null
cargo build --quiet --release -p scheduler -p worker -p tools
target/release/bench-load "$@"
