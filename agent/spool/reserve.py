"""The headroom reserve: space the spool takes from the file system in advance
(``state_dir/spool.reserve``, preallocated) and gives back when a write fails.

SQLite needs space even to delete: every change, a DELETE too, appends to the WAL, and a
checkpoint may have to grow ``spool.db`` to copy pages into it. On a full disk, without
room for that, a delivered batch could never be recorded as delivered. Releasing the
reserve at the first failed write makes that room (its size is worked out in
``capacity``); taking it again succeeds only once the file system has room to spare.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.telemetry import fields

log = logging.getLogger(__name__)


class Reserve:
    """A preallocated file of ``size`` bytes, held open while taken."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._fd: int | None = None
        self._complained = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        """Create (or reuse) the file and allocate its space. False, with nothing kept,
        if the file system has not the room (or the file cannot be made)."""
        if self._fd is not None:
            return True
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            self._complain(exc)
            return False
        try:
            os.fchmod(fd, 0o600)
            os.posix_fallocate(fd, 0, self.size)
            if os.fstat(fd).st_size > self.size:
                os.ftruncate(fd, self.size)
        except OSError as exc:
            self._discard(fd)
            self._complain(exc)
            return False
        self._fd = fd
        self._complained = False
        return True

    def release(self) -> None:
        """Give the space back to the file system."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._discard(fd)

    def close(self) -> None:
        """Stop holding the file, and leave it for the next start."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _discard(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            mine = os.fstat(fd).st_ino
            if os.stat(self.path, follow_symlinks=False).st_ino == mine:
                os.unlink(self.path)
        except OSError as exc:
            log.warning(
                "Could not remove the spool's reserve file",
                extra=fields(path=str(self.path), error=exc.strerror),
            )
        finally:
            os.close(fd)

    def _complain(self, exc: OSError) -> None:
        if not self._complained:
            self._complained = True
            log.warning(
                "Cannot take the spool's headroom reserve; new events wait until there is"
                " room in state_dir",
                extra=fields(path=str(self.path), size=self.size, error=exc.strerror),
            )
