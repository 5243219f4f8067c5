#!/bin/sh
# Install recbole-mind into a virtual environment (default .venv; VENV=... moves it), torch first.
# TORCH_SPEC (default torch==2.13.0) and TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu)
# choose the torch build: pip resolving a bare torch requirement on its own may pull CUDA packages.
# EXTRAS=test also installs the test tools. Sourced by quickstart.sh and test.sh.
set -eu
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
