# Sourced by the project's scripts: points tch's build at the project-local
# PyTorch install (.venv) so that `cargo` links the pinned libtorch.
GLOWLINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GLOWLINE_ROOT
export VIRTUAL_ENV="$GLOWLINE_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$GLOWLINE_ROOT/.tools/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
