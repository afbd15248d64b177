#!/usr/bin/env bash
# Set up interp in ./.venv: CPU PyTorch first (a bare `torch` requirement would pull a multi-GB CUDA
# build), then the package with its test, notebook and documentation tools (the dev and docs extras).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q -e ".[dev,docs]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import interp, torch; print(f'interp ready in .venv (torch {torch.__version__})')"
