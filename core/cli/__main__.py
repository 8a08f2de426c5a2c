"""`python -m core.cli`: the same entry point as the `forgetless` console script (used by background jobs)."""

import sys

from core.cli.main import main

sys.exit(main())
