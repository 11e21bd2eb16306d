"""``python -m agent`` is the same as ``tailhook``."""

import sys

from agent.cli import main

# Guarded: a conversion worker (``agent.pipeline.workers``) imports this module again as
# ``__mp_main__``, and must not run the agent a second time.
if __name__ == "__main__":
    sys.exit(main())
