#!/bin/sh
# Install what is needed, then train and evaluate MIND on ml-100k (it ships inside recbole).
# Arguments go to run_recbole_mind.py, e.g. sh scripts/quickstart.sh --epochs=5
set -eu
. "$(dirname "$0")/setup.sh"
exec "$VENV/bin/python" run_recbole_mind.py "$@"
