"""The file source: tails the files its globs match, by identity, with checkpoints.

A file is known by its identity (device and inode) and a fingerprint of its first bytes,
not by its path, so a rename rotation, a copytruncate and a reused inode are each told
apart from "the same file, grown". Reading progress is committed to the spool together
with the events it produced (``Spool.append``), never ahead of them.

Changes are noticed through watchdog (inotify, or polling with ``watch: poll``), and by
a rescan every second whatever the watcher says, so a missed event costs a second, not
a line. A directory watched alone (not a ``**`` glob's tree) is watched through
watchdog's shared inotify reader directly: its thread wakes the source, rather than
handing each event through an observer's emitter and dispatcher threads first. Which
files match, which are tailhook's own, and when to try again a file that could not be
opened: ``agent.sources.discovery``.

A file found at start but not readable yet keeps its checkpoint (and ``start_at``), so
it is read from where it was once it can be opened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.inotify_c import (
    WATCHDOG_ALL_EVENTS,
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from agent.config import FileSourceConfig
from agent.errors import StateError
from agent.pipeline import LineProcessor
from agent.pipeline.workers import BurstConverter
from agent.sources import ERROR_REASONS, commit_bytes
from agent.sources.discovery import FileFinder, file_key, static_prefix
from agent.sources.lines import LineSplitter
from agent.spool import Checkpoint, Spool
from agent.telemetry import Metrics, fields
from agent.worker import Worker

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
#: How many first bytes identify a file (and how many before the offset are compared):
#: lines of one WAF often share their first 64 bytes, rarely their first KiB.
FINGERPRINT_BYTES = 1024
RESCAN_SECONDS = 1.0
#: The checkpoint that marks a source as started once, so ``start_at`` applies only once.
STARTED_KEY = "*"


def read_fingerprint(fd: int) -> bytes:
    return os.pread(fd, FINGERPRINT_BYTES, 0)


def same_file_start(known: bytes, fingerprint: bytes) -> bool:
    """The file's first bytes now begin with the ``known`` first bytes."""
    return fingerprint[: len(known)] == known


def same_file(checkpoint: Checkpoint, fingerprint: bytes) -> bool:
    """The file now has the first bytes it had when the checkpoint was written."""
    return same_file_start(checkpoint.fingerprint, fingerprint)


@dataclass
class TailedFile:
    """One open file and how far it has been read."""

    key: str
    path: str
    fd: int
    read_pos: int
    splitter: LineSplitter
    fingerprint: bytes
    rotated_at: float | None = None  # when its path stopped pointing at it
    last_growth: float = field(default_factory=time.monotonic)
    #: The bytes just before ``committed`` when it was committed: if they change, the
    #: file was truncated and written again past our offset (its first bytes may not
    #: tell, when every line starts alike).
    mark: bytes = b""

    @property
    def committed(self) -> int:
        """Offset of the first byte of the incomplete line: what a restart resumes at."""
        return self.read_pos - self.splitter.pending

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.key, self.path, self.committed, self.fingerprint)


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event, rescan: threading.Event) -> None:
        self.wake = wake
        self.rescan = rescan

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved", "deleted"):
            self.rescan.set()
        self.wake.set()


#: What a directly watched directory reports: watchdog's events, and the directory itself
#: moved away (its path is then watched again, wherever it leads).
DIRECT_EVENTS = Mask(WATCHDOG_ALL_EVENTS | InotifyConstants.IN_MOVE_SELF)


class _DirectWatch:
    """A directory watched through watchdog's shared inotify reader (``InotifyFD``),
    whose thread calls ``on_event``: one hand-off per change, to the source's thread,
    instead of three through an observer's queue, emitter and dispatcher threads. At
    1,000 one-line writes a second those threads took ~24 % of a core. Its callback id
    is its own ``id()``: unique while the source holds it, even where two of a source's
    globs reach one directory by two paths (one inotify watch)."""

    def __init__(
        self, wake: threading.Event, rescan: threading.Event, lost: set[str], directory: str
    ) -> None:
        self.wake = wake
        self.rescan = rescan
        self.lost = lost  # watched directories gone (watched again once they are back)
        self.directory = directory

    def on_event(self, event: InotifyEvent) -> None:
        if event.is_move_self:  # the watch follows the directory; the path is what counts
            self.lost.add(self.directory)
        # Files created, moved or deleted (or the directory itself) are found by a
        # rescan; a write, an open or a close only wakes the source to read.
        if (
            event.is_create
            or event.is_move
            or event.is_delete
            or event.is_delete_self
            or event.is_move_self
        ):
            self.rescan.set()
        self.wake.set()

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self.lost.add(self.directory)
        self.rescan.set()
        self.wake.set()

    def on_queue_overflow(self) -> None:
        self.rescan.set()
        self.wake.set()


class FileSource(Worker):
    """Tails one ``type: file`` source in a thread of its own."""

    activity = "reading"

    def __init__(
        self,
        config: FileSourceConfig,
        spool: Spool,
        processor: LineProcessor,
        metrics: Metrics,
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir``: files that really lie inside it are never read."""
        super().__init__(f"source-{config.name}", {"source": config.name})
        self.name = config.name
        self.config = config
        self.spool = spool
        self.processor = processor
        self.converter = BurstConverter(processor, config.workers)
        self.metrics = metrics
        self.files: dict[str, TailedFile] = {}
        self._wake = threading.Event()
        self._rescan = threading.Event()
        self._observer: BaseObserver | None = None
        self._watched: set[str] = set()
        #: Directories watched directly: their watch, callback id and callback.
        self._direct: dict[str, tuple[WatchDescriptor, CallbackId, _DirectWatch]] = {}
        self._lost: set[str] = set()
        self._lines = metrics.source_lines.labels(source=self.name)
        self._bytes = metrics.source_bytes.labels(source=self.name)
        self._lag = metrics.file_lag.labels(source=self.name)
        self._open_files = metrics.source_files.labels(source=self.name)
        errors = {
            reason: metrics.source_errors.labels(source=self.name, reason=reason)
            for reason in ERROR_REASONS
        }
        self.finder = FileFinder(self.name, config.paths, state_dir, errors)
        #: Files found at start that could not be opened yet: the checkpoint and
        #: ``start_at`` they get once they can be.
        self._deferred: dict[str, tuple[Checkpoint | None, bool]] = {}
        self.started = threading.Event()
        self._last_scan = 0.0
        self._commit_bytes = commit_bytes(spool.max_bytes)

    # -- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def setup(self) -> None:
        self._start_watching()

    def teardown(self) -> None:
        self._stop_watching()
        self.converter.close()
        for tailed in self.files.values():
            os.close(tailed.fd)
        self.files.clear()
        self._open_files.set(0)

    def step(self) -> bool:
        """Start once, rescan now and then, read what is new, or wait for news."""
        if self.stopping:
            return False
        if not self.started.is_set():
            self._open_initial()
            self.started.set()
        if self._rescan.is_set() or time.monotonic() - self._last_scan >= RESCAN_SECONDS:
            self._rescan.clear()
            self._scan()
            self._last_scan = time.monotonic()
        if not self._read_all():
            self._wake.wait(RESCAN_SECONDS)
            self._wake.clear()
        return True

    # -- watching ---------------------------------------------------------------------

    def _start_watching(self) -> None:
        mode = self.config.watch
        if mode == "poll":
            self._observer = PollingObserver(timeout=RESCAN_SECONDS)
        else:
            try:
                self._observer = Observer()
            except OSError as exc:
                if mode == "inotify":
                    raise
                log.warning(
                    "inotify is not available; polling instead",
                    extra=fields(source=self.name, error=str(exc)),
                )
                self._observer = PollingObserver(timeout=RESCAN_SECONDS)
        self._observer.daemon = True
        self._observer.start()
        self._watch_directories()

    def _watch_directories(self) -> None:
        """Watch each glob's directory, once it exists.

        Behind a symlinked path (Kubernetes' /var/log/containers) appends happen in a
        directory the glob does not name; they are read at the next one-second turn.
        Watching each target directory would cut that to milliseconds but costs watchdog
        a thread per directory (measured: 108 threads for 100 pods)."""
        for pattern in self.config.paths:
            directory = static_prefix(pattern)
            self._watch(directory, recursive=directory != os.path.dirname(pattern))

    def _watch(self, directory: str, recursive: bool) -> None:
        assert self._observer is not None
        self._forget_lost()
        if directory in self._watched or not os.path.isdir(directory):
            return
        try:
            if not recursive and isinstance(self._observer, InotifyObserver):
                self._watch_directly(directory)
            else:
                wake = _Wake(self._wake, self._rescan)
                self._observer.schedule(wake, directory, recursive=recursive)
        except OSError as exc:
            log.warning(
                "Cannot watch a directory; it is rescanned every second",
                extra=fields(source=self.name, directory=directory, error=str(exc)),
            )
        self._watched.add(directory)

    def _watch_directly(self, directory: str) -> None:
        watch = _DirectWatch(self._wake, self._rescan, self._lost, directory)
        callback_id = CallbackId(id(watch))
        wd = InotifyFD.get_instance().add_callback(
            os.fsencode(directory), DIRECT_EVENTS, watch, callback_id
        )
        self._direct[directory] = (wd, callback_id, watch)

    def _forget_lost(self) -> None:
        """Directories deleted or moved away are watched again once their path leads to
        a directory again (their old callbacks are removed)."""
        stale = []
        while self._lost:
            directory = self._lost.pop()
            watched = self._direct.pop(directory, None)
            if watched is not None:
                stale.append(watched[:2])
            self._watched.discard(directory)
        if stale:
            InotifyFD.get_instance().remove_callbacks(stale)

    def _stop_watching(self) -> None:
        if self._direct:
            callbacks = [(wd, callback_id) for wd, callback_id, _ in self._direct.values()]
            InotifyFD.get_instance().remove_callbacks(callbacks)
            self._direct.clear()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    # -- finding files ----------------------------------------------------------------

    def _open_initial(self) -> None:
        checkpoints = self.spool.checkpoints(self.name)
        # A spool replaced after damage knows no files: read them again from the start.
        first_start = STARTED_KEY not in checkpoints and not self.spool.recovered
        at_end = first_start and self.config.start_at == "end"
        for key, (path, st) in self.finder.matches(self.files).items():
            if not self._open(key, path, st, checkpoints.get(key), at_end):
                self._deferred[key] = (checkpoints.get(key), at_end)
        found = self.files.keys() | self._deferred.keys()
        gone = [key for key in checkpoints if key != STARTED_KEY and key not in found]
        self.spool.forget_checkpoints(self.name, gone)
        marker = Checkpoint(STARTED_KEY, "", 0, b"")
        self.spool.append(self.name, None, marker)
        for tailed in self.files.values():
            self.spool.append(self.name, None, tailed.checkpoint())
        self._open_files.set(len(self.files))

    def _open(
        self,
        key: str,
        path: str,
        st: os.stat_result,
        checkpoint: Checkpoint | None,
        at_end: bool,
    ) -> bool:
        """Open and start tailing ``path``; False if it cannot be opened (now)."""
        if not self.finder.due(path, key):
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.finder.failed(path, key, exc)
            return False
        self.finder.succeeded(path)
        actual = os.fstat(fd)
        key = file_key(actual)
        if key in self.files:  # replaced, between the glob and the open, by one we tail
            os.close(fd)
            return True
        fingerprint = read_fingerprint(fd)
        start = 0
        if checkpoint is not None and same_file(checkpoint, fingerprint):
            start = checkpoint.offset if checkpoint.offset <= actual.st_size else 0
        elif at_end:
            start = _end_of_last_line(fd, actual.st_size)
        splitter = LineSplitter(self.config.max_line_bytes, skip_bom=start == 0)
        self.files[key] = TailedFile(
            key, path, fd, start, splitter, fingerprint, mark=_bytes_before(fd, start)
        )
        log.info("Tailing a file", extra=fields(source=self.name, path=path, offset=start))
        return True

    def _scan(self) -> None:
        """Pick up new files, notice rotated and deleted ones, release finished ones."""
        self._watch_directories()
        matches = self.finder.matches(self.files)
        now = time.monotonic()
        for key, (path, st) in matches.items():
            tailed = self.files.get(key)
            if tailed is None:
                checkpoint, at_end = self._deferred.get(key, (None, False))
                if self._open(key, path, st, checkpoint, at_end):
                    self._deferred.pop(key, None)
            else:
                tailed.path = path
                tailed.rotated_at = None
        gone = [key for key in self._deferred if key not in matches]
        if gone:  # found at start, never opened, and now gone
            for key in gone:
                del self._deferred[key]
            self.spool.forget_checkpoints(self.name, gone)
        lag = 0
        for key, tailed in list(self.files.items()):
            if self._rewritten(tailed):
                self._truncated(tailed)
            st = os.fstat(tailed.fd)
            lag += max(0, st.st_size - tailed.read_pos)
            if key in matches and st.st_nlink > 0:
                continue
            if tailed.rotated_at is None:
                tailed.rotated_at = now
            # Quiet for rotate_wait since it was rotated away (or last grew, if later):
            # a writer may still append to it through a descriptor opened before.
            idle = now - max(tailed.last_growth, tailed.rotated_at)
            if idle >= self.config.rotate_wait and st.st_size <= tailed.read_pos:
                self._release(tailed)
        self._lag.set(lag)
        self._open_files.set(len(self.files))

    def _release(self, tailed: TailedFile) -> None:
        log.info(
            "Released a rotated or deleted file after reading it to its end",
            extra=fields(source=self.name, path=tailed.path),
        )
        os.close(tailed.fd)
        del self.files[tailed.key]
        self.spool.forget_checkpoints(self.name, [tailed.key])

    # -- reading ----------------------------------------------------------------------

    def _read_all(self) -> bool:
        """One turn over every file; True if any had new data."""
        progressed = False
        for tailed in list(self.files.values()):
            if self.stopping:
                break
            if self._read_some(tailed):
                progressed = True
        return progressed

    def _read_some(self, tailed: TailedFile) -> bool:
        if self._rewritten(tailed):
            self._truncated(tailed)
        before = tailed.committed
        lines: list[bytes] = []
        consumed = 0
        while consumed < self._commit_bytes:
            data = os.pread(tailed.fd, min(CHUNK_BYTES, self._commit_bytes), tailed.read_pos)
            if not data:
                break
            tailed.read_pos += len(data)
            consumed += len(data)
            complete, long_lines = tailed.splitter.feed(data)
            lines.extend(complete)
            for long_line in long_lines:
                self.processor.reject_too_long(long_line.head, long_line.length)
        if not consumed:
            return False
        tailed.last_growth = time.monotonic()
        if tailed.read_pos <= FINGERPRINT_BYTES or len(tailed.fingerprint) < FINGERPRINT_BYTES:
            tailed.fingerprint = read_fingerprint(tailed.fd)
        events = self.converter.convert(lines, consumed)
        try:
            kept = self.spool.append(self.name, events, tailed.checkpoint(), self._stop)
        except StateError:
            self._rewind(tailed, before)  # nothing was kept: read it again
            raise
        if not kept:  # stopping while the spool was full: it is read again at the next start
            self._rewind(tailed, before)
            return False
        tailed.mark = _bytes_before(tailed.fd, tailed.committed)
        self._lines.inc(len(lines))
        self._bytes.inc(consumed)
        return True

    @staticmethod
    def _rewritten(tailed: TailedFile) -> bool:
        """The file shrank below our offset, or was truncated and written again past it
        (its first bytes, or the bytes just before our offset, are not what they were)."""
        if os.fstat(tailed.fd).st_size < tailed.read_pos:  # even into a half-read line
            return True
        if not same_file_start(tailed.fingerprint, read_fingerprint(tailed.fd)):
            return True
        mark = tailed.mark
        return bool(mark) and _bytes_before(tailed.fd, tailed.committed, len(mark)) != mark

    def _rewind(self, tailed: TailedFile, offset: int) -> None:
        tailed.read_pos = offset
        tailed.splitter = LineSplitter(self.config.max_line_bytes, skip_bom=offset == 0)

    def _truncated(self, tailed: TailedFile) -> None:
        log.warning(
            "A file shrank below the read offset (copytruncate?); reading it again from its start",
            extra=fields(source=self.name, path=tailed.path),
        )
        self.metrics.file_truncations.labels(source=self.name).inc()
        tailed.read_pos = 0
        tailed.splitter = LineSplitter(self.config.max_line_bytes, skip_bom=True)
        tailed.fingerprint = read_fingerprint(tailed.fd)
        tailed.mark = b""


def _bytes_before(fd: int, offset: int, size: int = FINGERPRINT_BYTES) -> bytes:
    start = max(0, offset - size)
    return os.pread(fd, offset - start, start)


def _end_of_last_line(fd: int, size: int) -> int:
    """Offset just past the last newline before ``size`` (``start_at: end``)."""
    pos = size
    while pos > 0:
        start = max(0, pos - CHUNK_BYTES)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0
