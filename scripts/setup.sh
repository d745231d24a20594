#!/usr/bin/env bash
# Installs what building and running Glowline needs, skipping whatever is
# already there: the pinned PyTorch wheel (its libtorch is what tch links) in
# a project-local virtual environment, and ffmpeg for MP4 output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

# tch 0.24.0 is built against exactly this libtorch; the GPU machines carry it too.
TORCH_VERSION=2.11.0

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${missing[*]} from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi
apt_install ffmpeg

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION into .venv (a large download, once)"
    .venv/bin/pip install --quiet --progress-bar off "torch==$TORCH_VERSION"
fi

# The face detector for automatic alignment (MTCNN): its weights ship inside
# facenet-pytorch's wheel. --no-deps keeps pip from replacing the pinned torch
# with the older one the package names; only the weight files are used, and
# they are converted once to safetensors for tch.
FACENET_PYTORCH_VERSION=2.6.0
DETECTOR_WEIGHTS=models/mtcnn.safetensors
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('facenet-pytorch') != '$FACENET_PYTORCH_VERSION')" 2>/dev/null; then
    echo "setup: installing facenet-pytorch==$FACENET_PYTORCH_VERSION (MTCNN's weights) into .venv"
    .venv/bin/pip install --quiet --progress-bar off --no-deps "facenet-pytorch==$FACENET_PYTORCH_VERSION"
fi
if [ ! -f "$DETECTOR_WEIGHTS" ] || [ scripts/convert_mtcnn.py -nt "$DETECTOR_WEIGHTS" ]; then
    .venv/bin/python scripts/convert_mtcnn.py "$DETECTOR_WEIGHTS"
fi

# promtool, with which the tests check the services' /metrics.
scripts/promtool.sh
