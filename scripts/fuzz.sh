#!/usr/bin/env bash
# Fuzzes the two parsers of untrusted bytes with libFuzzer (cargo-fuzz):
# `job_spec` (submissions and job specs) and `image_decode` (input photos).
# cargo-fuzz is installed once into .tools/; the seed corpus is the
# committed example jobs and faces, and what the fuzzer finds stays under
# fuzz/corpus/ and fuzz/artifacts/ (git-ignored). A crash exits non-zero
# and leaves its input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600        # 10 minutes per target
#
# cargo-fuzz needs a nightly compiler for its sanitizer flags; on the
# stable toolchain RUSTC_BOOTSTRAP=1 unlocks them for this build only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-60}"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools"
    cargo install --quiet --locked --root .tools --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

seed() {
    local target="$1"
    shift
    mkdir -p "fuzz/corpus/$target"
    cp -n "$@" "fuzz/corpus/$target/"
}
seed job_spec examples/jobs/*.json
seed image_decode examples/faces/* photo/tests/data/*

export RUSTC_BOOTSTRAP=1
for target in job_spec image_decode; do
    echo "fuzz: $target for $seconds s"
    # -rss_limit_mb: an input that makes a decoder allocate past 2 GiB is a
    # finding, whatever the limits in the code say.
    cargo fuzz run --fuzz-dir fuzz "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1
done
echo "fuzz: no crash in $seconds s per target"
