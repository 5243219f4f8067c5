"""``python -m recbole_mind``: the same command line as run_recbole_mind.py."""

import sys

from recbole_mind.cli import main

sys.exit(main())
