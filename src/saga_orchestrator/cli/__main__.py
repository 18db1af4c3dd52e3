"""``python -m saga_orchestrator.cli``: the same command line as the console script."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
