"""Finding a file source's files: which files its globs match now, by identity.

``FileFinder`` owns three decisions the file source should not repeat on every turn:

- What matches: regular files (symlinks followed), each once by identity (device and
  inode), whatever path or glob found it.
- What is never read: a match that really lies inside ``state_dir`` (tailhook's own
  rejected-lines, dead-letter and spool files, reached through a symlink, say). The
  config refuses globs that can reach there; this catches what a symlink hides. One
  warning per source.
- When to try a path again that could not be used (not permitted, vanished, an I/O
  error): after 1 s, then 2, 4, ... up to a minute, with a warning each time and each
  failure counted in ``tailhook_source_errors_total{reason}``, never a warning every
  second. A new file at that path (another identity) is tried at once.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from agent.sources import error_reason
from agent.telemetry import fields

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


def file_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


@dataclass
class _Failing:
    """A path that could not be used: its identity then (None if it could not even be
    looked at), the wait before the next try, and when that is."""

    key: str | None
    delay: float
    retry_at: float


class FileFinder:
    """The matches of one source's globs, without its own files and with retry backoff."""

    def __init__(
        self,
        source: str,
        patterns: tuple[str, ...],
        state_dir: Path | None,
        errors: Mapping[str, Counter],
    ) -> None:
        self.source = source
        self.patterns = patterns
        self.errors = errors  # by reason: the tailhook_source_errors_total children
        self._state_dir = os.path.realpath(state_dir) if state_dir is not None else None
        self._warned_own = False
        self._failing: dict[str, _Failing] = {}  # by path

    def matches(self, known: Container[str]) -> dict[str, tuple[str, os.stat_result]]:
        """The files the globs match now, by identity. ``known`` are identities already
        being tailed (not checked again for lying inside ``state_dir``)."""
        found: dict[str, tuple[str, os.stat_result]] = {}
        globbed: set[str] = set()
        for pattern in self.patterns:
            for path in sorted(glob.glob(pattern)):
                globbed.add(path)
                try:
                    st = os.stat(path)
                except OSError as exc:  # a dangling symlink, a directory we may not search
                    if self.due(path, None):
                        self.failed(path, None, exc)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = file_key(st)
                if key not in known and self._inside_state_dir(path):
                    continue
                found.setdefault(key, (path, st))
        for path in [p for p in self._failing if p not in globbed]:
            del self._failing[path]  # gone from the globs: nothing to try again
        return found

    def due(self, path: str, key: str | None) -> bool:
        """Whether to try ``path`` now: it never failed, its wait is over, or another
        file (identity ``key``) is at the path now."""
        failing = self._failing.get(path)
        return failing is None or failing.key != key or time.monotonic() >= failing.retry_at

    def failed(self, path: str, key: str | None, exc: OSError) -> None:
        """Count the failure, warn, and wait twice as long as last time before the next."""
        failing = self._failing.get(path)
        delay = RETRY_FIRST_SECONDS
        if failing is not None and failing.key == key:
            delay = min(failing.delay * 2, RETRY_MAX_SECONDS)
        self._failing[path] = _Failing(key, delay, time.monotonic() + delay)
        reason = error_reason(exc)
        self.errors[reason].inc()
        log.warning(
            "Cannot read a log file; trying again later",
            extra=fields(
                source=self.source,
                path=path,
                reason=reason,
                error=exc.strerror or str(exc),
                retry_in=delay,
            ),
        )

    def succeeded(self, path: str) -> None:
        if self._failing.pop(path, None) is not None:
            log.info("A log file can be read now", extra=fields(source=self.source, path=path))

    def _inside_state_dir(self, path: str) -> bool:
        if self._state_dir is None:
            return False
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._state_dir]) != self._state_dir:
            return False
        if not self._warned_own:
            self._warned_own = True
            log.warning(
                "A glob matches a file inside state_dir; tailhook never reads its own files",
                extra=fields(source=self.source, path=path, real_path=real),
            )
        return True


def static_prefix(pattern: str) -> str:
    """The longest leading directory of a glob with no wildcard in it."""
    parts = Path(pattern).parent.parts
    static: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        static.append(part)
    return str(Path(*static)) if static else "."
