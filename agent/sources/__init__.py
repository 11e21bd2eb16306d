"""Sources read detection lines and hand them, with their position, to the spool.

``file`` tails globbed log files; ``unix_socket`` listens on a UNIX socket. Every source
is a ``Source``: started once, asked to stop once, with a thread of its own.
"""

from __future__ import annotations

import errno
import threading
from typing import Protocol

from agent.spool.capacity import read_bytes

#: Why a source could not open or read its input: the ``reason`` label of
#: ``tailhook_source_errors_total``.
ERROR_REASONS = ("permission", "not_found", "io")


def error_reason(exc: OSError) -> str:
    """The ``reason`` label of an ``OSError`` met opening or reading an input."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    if exc.errno == errno.ENOENT:
        return "not_found"
    return "io"


def commit_bytes(spool_max_bytes: int) -> int:
    """Bytes a source reads before it commits them to the spool in one segment (and, for
    files, before other files get a turn): 1/256 of ``spool.max_bytes``, 16 KiB to
    1 MiB, so that one commit fits the spool's WAL (see ``agent.spool.capacity``)."""
    return read_bytes(spool_max_bytes)


class Source(Protocol):
    name: str
    started: threading.Event  # set once it reads (readiness waits for every source)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    def overdue(self, now: float) -> float: ...
