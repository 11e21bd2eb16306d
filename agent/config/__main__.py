"""``python -m agent.config [PATH]``: write the JSON Schema the table of keys generates
to PATH (``make schema`` writes ``schemas/config.schema.json``), or print it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from agent.config.keys import TABLE
from agent.config.schema import render_schema


def main(argv: list[str]) -> int:
    text = render_schema(TABLE)
    if not argv:
        sys.stdout.write(text)
        return 0
    target = Path(argv[0])
    # Written beside the target and renamed over it: never a half-written schema.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
