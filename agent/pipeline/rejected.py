"""The rejected-lines file of one source: ``state_dir/rejected/SOURCE.jsonl``.

One JSON object per rejected line: time, source, reason, detail, length and the line
itself (its first KiB when it was too long; bytes that are not UTF-8 escaped). The file
is kept under ``max_bytes``: past that it becomes ``SOURCE.jsonl.1`` and the older
``.1`` is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import orjson

from agent.telemetry import fields

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024


class RejectedLog:
    def __init__(self, directory: Path, source: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = directory / f"{source}.jsonl"
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
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
