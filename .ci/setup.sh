#!/usr/bin/env bash
# Create .venv and install genomamba with its test extras. Idempotent; safe to re-run.
# Prefers an already-installed torch, then the pinned CPU wheel that many machines cache locally
# (fast), and only then whatever torch pip resolves (may be a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install torch==2.13.0 2>/dev/null || "${PIP[@]}" install torch
fi
"${PIP[@]}" install -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import genomamba, torch; print(f'genomamba {genomamba.__version__} ready (torch {torch.__version__})')"
