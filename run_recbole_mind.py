#!/usr/bin/env python
"""Train and evaluate MIND or a RecBole built-in through RecBole's pipeline; see --help."""

import sys

from recbole_mind.cli import main

if __name__ == "__main__":
    sys.exit(main())
