#!/usr/bin/env bash
# Sets everything up (skipping what is there) and runs every test of the
# workspace against real services: Postgres and RabbitMQ on loopback, and a
# local S3 server that scripts/services.sh installs and starts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

scripts/setup.sh
if [ -x scripts/services.sh ]; then
    scripts/services.sh
fi
cargo test --workspace "$@"
