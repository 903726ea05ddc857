#!/usr/bin/env bash
# Create .venv (if missing) and install seediff with its server, ray and dev extras. Idempotent.
# torch is installed first and pinned: `pip install torch==2.13.0` takes the CPU build; an unpinned torch
# would pull a multi-GB CUDA build. GPU users: install the CUDA torch into .venv first (see README), then
# run this script with SEEDIFF_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "${SEEDIFF_TORCH:-}" != "skip" ]; then
  python -m pip install -q "torch==${SEEDIFF_TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e '.[server,ray,dev]'
python -c "import seediff, torch; print(f'seediff {seediff.__version__} ready (torch {torch.__version__})')"
