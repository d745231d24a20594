#!/usr/bin/env bash
# Sets everything up (skipping what is there) and runs Glowline's main job
# locally, with no server: the shipped model samples faces and round-trips
# the example faces through its latent space. Results land in out/demo/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

scripts/setup.sh
cargo build -p glow
glow=target/debug/glow
model=models/celeba64.safetensors
out=out/demo
mkdir -p "$out"

"$glow" info "$model"
"$glow" sample --model "$model" --n 32 --temperature 0.7 --seed 1 --out "$out/samples-t0.7.png"
"$glow" reconstruct --model "$model" --out "$out/reconstructions.png" examples/faces/*.jpg
echo "demo outputs are in $out/"
