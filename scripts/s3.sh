#!/usr/bin/env bash
# Starts a real S3-protocol server (s3s-fs) on loopback for Glowline's tests
# and local stack, installing it first if it is missing. Idempotent: if the
# server already answers, nothing happens.
#
# Settings (environment):
#   GLOWLINE_S3_PORT      port to listen on (default 8014)
#   GLOWLINE_S3_DATA      data directory (default /tmp/glowline-s3)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
#                         the only credentials the server accepts (default:
#                         the loopback test pair below; never a real secret)
set -euo pipefail

# The last s3s-fs release that builds with the pinned toolchain.
S3S_FS_VERSION=0.14.1
PORT="${GLOWLINE_S3_PORT:-8014}"
DATA="${GLOWLINE_S3_DATA:-/tmp/glowline-s3}"
ACCESS_KEY="${AWS_ACCESS_KEY_ID:-glowline-test}"
SECRET_KEY="${AWS_SECRET_ACCESS_KEY:-glowline-test-secret}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
LOG="$DATA.log"

answers() {
    # Any HTTP answer (403 without credentials included) means it is up.
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/" 2>/dev/null
}

if answers; then
    echo "s3: already running on 127.0.0.1:$PORT"
    exit 0
fi

if ! "$CARGO_BIN/s3s-fs" --version >/dev/null 2>&1; then
    echo "s3: installing s3s-fs $S3S_FS_VERSION (once; a few minutes)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --quiet
fi

mkdir -p "$DATA"
echo "s3: starting s3s-fs on 127.0.0.1:$PORT with data in $DATA"
setsid nohup "$CARGO_BIN/s3s-fs" --host 127.0.0.1 --port "$PORT" \
    --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$DATA" >"$LOG" 2>&1 < /dev/null &

for _ in $(seq 1 50); do
    answers && exit 0
    sleep 0.2
done
echo "s3: s3s-fs did not start; its log ($LOG):" >&2
cat "$LOG" >&2
exit 1
