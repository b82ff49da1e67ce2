#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment at .venv: CPU torch first (a bare torch
# requirement would pull a multi-GB CUDA build), then hpod with its dev extras.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.hpod-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${HPOD_TORCH_VERSION:-2.13.0}"
  python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
