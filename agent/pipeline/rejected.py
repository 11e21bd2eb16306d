"""The rejected-lines file of one source: ``state_dir/rejected/SOURCE.jsonl``.

One JSON object per rejected line: time, source, reason, detail, length and the line
itself (its first KiB when it was too long; bytes that are not UTF-8 escaped). The file
is kept under ``max_bytes``: past that it becomes ``SOURCE.jsonl.1`` and the older
``.1`` is dropped. Files are opened through ``agent.statedir``, never through a
symbolic link: a link (or another kind of file) where the file goes is refused with an
ERROR, and rejected lines are then only counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

import orjson

from agent.errors import StateError
from agent.statedir import open_dir, open_file
from agent.telemetry import fields

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
DIRECTORY = "rejected"


class RejectedLines(Protocol):
    """Where a processor puts its rejected lines: the file (``RejectedLog``), or a
    record of them (``agent.pipeline.workers.Recorded``) written later, in order."""

    def write(self, reason: str, detail: str, line: bytes, length: int) -> None: ...


class RejectedLog:
    def __init__(self, state_dir: Path, source: str, max_bytes: int = MAX_BYTES) -> None:
        self.state_dir = state_dir
        self.name = f"{source}.jsonl"
        self.path = state_dir / DIRECTORY / self.name
        self.source = source
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._failed = False

    def write(self, reason: str, detail: str, line: bytes, length: int) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": self.source,
            "reason": reason,
            "detail": detail,
            "length": length,
            "line": line.decode("utf-8", errors="backslashreplace"),
        }
        data = orjson.dumps(entry) + b"\n"
        with self._lock:
            try:
                self._append(data)
            except StateError as exc:  # a link or another kind of file where ours goes
                if not self._failed:
                    log.error(
                        "Refusing to write the rejected-lines file; rejected lines are only"
                        " counted until it is fixed",
                        extra=fields(source=self.source, error=str(exc)),
                    )
                self._failed = True
                return
            except OSError as exc:
                if not self._failed:
                    log.warning(
                        "Cannot write the rejected-lines file; rejected lines are only counted",
                        extra=fields(source=self.source, error=str(exc)),
                    )
                self._failed = True
                return
            self._failed = False

    def _append(self, data: bytes) -> None:
        with open_dir(self.state_dir, DIRECTORY, create=True) as dir_fd:
            try:
                size = os.stat(self.name, dir_fd=dir_fd, follow_symlinks=False).st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                os.replace(self.name, self.name + ".1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = open_file(self.state_dir, DIRECTORY, self.name, flags=flags)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
