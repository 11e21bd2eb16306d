"""Sources read detection lines and hand them, with their position, to the spool.

``file`` tails globbed log files; ``unix_socket`` listens on a UNIX socket. Every source
is a ``Source``: started once, asked to stop once, with a thread of its own.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Source(Protocol):
    name: str
    started: threading.Event  # set once it reads (readiness waits for every source)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...
