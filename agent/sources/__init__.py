"""Sources read detection lines and hand them, with their position, to the spool.

``file`` tails globbed log files; ``unix_socket`` listens on a UNIX socket. Every source
is a ``Source``: started once, asked to stop once, with a thread of its own.
"""

from __future__ import annotations

import threading
from typing import Protocol

#: Bytes a source reads before it commits them to the spool in one segment (and, for
#: files, before other files get a turn).
COMMIT_BYTES = 1024 * 1024
MIN_COMMIT_BYTES = 16 * 1024


def commit_bytes(spool_max_bytes: int) -> int:
    """The read budget of one commit: less with a small spool, so that one read stays
    well within ``spool.max_bytes``."""
    return max(MIN_COMMIT_BYTES, min(COMMIT_BYTES, spool_max_bytes // 4))


class Source(Protocol):
    name: str
    started: threading.Event  # set once it reads (readiness waits for every source)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    def overdue(self, now: float) -> float: ...
