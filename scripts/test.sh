#!/bin/sh
# Install what is needed with the test tools, then run the test suite.
set -eu
EXTRAS=test
. "$(dirname "$0")/setup.sh"
exec "$VENV/bin/python" -m pytest -q tests "$@"
