"""``python -m agent`` is the same as ``tailhook``."""

import sys

from agent.cli import main

sys.exit(main())
