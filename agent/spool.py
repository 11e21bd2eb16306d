"""The spool: tailhook's one owner of durable state (SQLite, in ``state_dir/spool.db``).

What it keeps, all in one database so that one transaction can cover them together:

- ``segments``: accepted notifications, in segments of one source read each (often
  thousands of events): the serialised objects joined by newlines, and one letter per
  event for its type. Segment numbers only grow (AUTOINCREMENT), and segments are only
  ever deleted oldest first, so the segment after N is always N + 1. Storing segments
  rather than rows per event keeps durability to well under a microsecond per event;
- ``checkpoints``: per source and file identity, the offset up to which lines were read,
  written in the same transaction as the segment read up to it, so a crash can neither
  skip a line nor record it twice on the way in;
- ``cursors``: per webhook, the position (segment, index) of the next event it has not
  delivered or dead-lettered;
- ``batches``: per webhook, the batch in flight: its ``webhook-id``, the range of
  positions it covers and the event types it took, recorded before its first attempt.
  Its body is rebuilt from that range byte for byte (the same function formed it), so
  every retry, after a restart too, sends the same bytes under the same id without the
  events being written twice; only when ``drop_oldest`` is about to delete segments
  under a batch in flight is its body stored in the row.

A segment leaves the spool once every enabled webhook's cursor has passed it. The
database runs in WAL mode with ``synchronous=NORMAL``: a killed process loses nothing
that was committed; a power cut may roll back the newest commits, but offsets roll back
with the events they cover, so lines are read again rather than lost.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StateError
from agent.telemetry import Metrics, fields

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    count INTEGER NOT NULL,
    types TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    target TEXT  -- NULL: for every webhook; else only for this one (a dead-letter replay)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    webhook TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    webhook TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    start_position INTEGER NOT NULL,
    end_position INTEGER NOT NULL,
    codes TEXT NOT NULL,
    body BLOB,
    type_counts TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL
);
"""

#: One letter per event type in a segment's ``types``.
TYPE_CODES = {"hit": "h", "vulnerability": "v", "system": "s", "scope": "c"}
CODE_TYPES = {code: kind for kind, code in TYPE_CODES.items()}
#: A position is ``segment << INDEX_BITS | index``.
INDEX_BITS = 24
INDEX_MASK = (1 << INDEX_BITS) - 1
#: Segments split into events, kept for the next batch (of any webhook).
CACHED_SEGMENTS = 8


def new_webhook_id() -> str:
    """A Standard Webhooks message id for a new batch."""
    return "msg_" + uuid.uuid4().hex


def position(seq: int, index: int) -> int:
    return seq << INDEX_BITS | index


class NewSegment:
    """The events of one read, encoded as the spool keeps them, built one event at a time.

    Each serialised notification is copied into one buffer as it is made, rather than
    kept as its own bytes object: with thousands of objects alive at once, every new
    one costs the allocator fresh memory (measured: ~4 µs per event more).
    """

    __slots__ = ("body", "codes")

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.body = bytearray()

    def add(self, event_type: str, notification: bytes) -> None:
        if self.codes:
            self.body += b"\n"
        self.body += notification
        self.codes.append(TYPE_CODES[event_type])

    @classmethod
    def of(cls, events: Iterable[tuple[str, bytes]]) -> NewSegment:
        segment = cls()
        for event_type, notification in events:
            segment.add(event_type, notification)
        return segment

    def __len__(self) -> int:
        return len(self.codes)

    def keeping(self, wanted: str) -> tuple[str, bytes]:
        """The type letters and body of the events whose type letter is in ``wanted``."""
        types = "".join(self.codes)
        if all(code in wanted for code in set(types)):
            return types, bytes(self.body)
        kept = [
            (code, body)
            for code, body in zip(types, bytes(self.body).split(b"\n"), strict=True)
            if code in wanted
        ]
        return "".join(code for code, _ in kept), b"\n".join(body for _, body in kept)


@dataclass(frozen=True)
class Checkpoint:
    """How far one file has been read: complete lines up to ``offset``."""

    key: str  # the file's identity, "DEV:INODE"
    path: str  # where it was last seen, for people reading the state
    offset: int
    fingerprint: bytes  # the file's first bytes, to tell a reused inode from the same file


@dataclass(frozen=True)
class Batch:
    """One request's worth of events for one webhook, fixed once recorded."""

    webhook_id: str
    start_position: int
    end_position: int  # the webhook's cursor once this batch is finished
    codes: str  # the type letters it took
    body: bytes
    type_counts: Mapping[str, int]
    created: float
    attempts: int

    @property
    def count(self) -> int:
        return sum(self.type_counts.values())


@dataclass(frozen=True)
class _Segment:
    """A stored segment, with where each event starts in its body."""

    types: str
    body: bytes
    starts: list[int]  # starts[i] is event i's first byte; starts[count] is len(body) + 1
    created: float
    target: str | None

    @property
    def count(self) -> int:
        return len(self.types)

    @classmethod
    def parse(cls, types: str, body: bytes, created: float, target: str | None) -> _Segment:
        starts = [0]
        find = body.find
        for _ in range(len(types) - 1):
            starts.append(find(b"\n", starts[-1]) + 1)
        starts.append(len(body) + 1)
        return cls(types, body, starts, created, target)

    def take(
        self, index: int, stop: int, codes: str, max_events: int, budget: int, first: bool
    ) -> tuple[list[bytes], int]:
        """Events in ``[index, stop)`` of the types in ``codes``, at most ``max_events``
        of them and ``budget`` bytes (each counted with one separator); with ``first``
        (nothing taken yet for the batch) the first event fits whatever its size.
        Returns their bytes (runs of adjacent events joined by ",") and the index after
        the last event looked at."""
        starts, body, types = self.starts, self.body, self.types
        end = min(stop, index + max_events)
        if all(code in codes for code in set(types[index:end])):
            # The common case: every event is wanted, so the run is one slice.
            if index == end:
                return [], end
            limit = starts[index] + budget
            if first:
                limit = max(limit, starts[index + 1])
            end = min(end, bisect_right(starts, limit, index + 1, end + 1) - 1)
            run = body[starts[index] : starts[end] - 1].replace(b"\n", b",")
            return [run], end
        parts: list[bytes] = []
        used = 0
        while index < stop and len(parts) < max_events:
            if types[index] in codes:
                size = starts[index + 1] - starts[index]
                if (parts or not first) and used + size > budget:
                    break
                parts.append(body[starts[index] : starts[index + 1] - 1])
                used += size
            index += 1
        return parts, index


class Spool:
    """Durable queue of events between sources and webhooks. Thread-safe."""

    def __init__(
        self,
        path: Path,
        metrics: Metrics,
        max_bytes: int = 1 << 30,
        when_full: str = "block",
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._metrics = metrics
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._codes: dict[str, str] = {}  # webhook -> the type letters it takes
        self._cursors: dict[str, int] = {}
        self._backlog: dict[str, int] = {}
        self._cache: dict[int, _Segment] = {}
        self._newest_known = 0
        #: False while writes fail (a full disk): /readyz says so; reset by the next write.
        self.writable = True
        self._db, self.recovered = _open_database(path)
        try:
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM segments")
            self._bytes: int = row.fetchone()[0]
            self._newest_known = self._newest_seq()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the spool at {path}: {exc}") from exc
        self._metrics.spool_bytes.set(self._bytes)

    # -- webhooks ---------------------------------------------------------------------

    def configure_webhooks(self, subscriptions: Mapping[str, frozenset[str]]) -> None:
        """Set the enabled webhooks and the event types each takes.

        A webhook seen for the first time starts after the newest event kept; a webhook
        no longer enabled loses its cursor and batch, and with them its claim on events.
        """
        with self._changed:
            start = position(self._newest_seq() + 1, 0)
            with self._transaction():
                known = dict(self._db.execute("SELECT webhook, position FROM cursors"))
                for name in known.keys() - subscriptions.keys():
                    self._db.execute("DELETE FROM cursors WHERE webhook = ?", (name,))
                    self._db.execute("DELETE FROM batches WHERE webhook = ?", (name,))
                for name in subscriptions.keys() - known.keys():
                    self._db.execute("INSERT INTO cursors VALUES (?, ?)", (name, start))
                    known[name] = start
            self._codes = {
                name: "".join(TYPE_CODES[kind] for kind in sorted(kinds))
                for name, kinds in subscriptions.items()
            }
            self._cursors = {name: known[name] for name in subscriptions}
            self._backlog = {name: self._count_pending(name) for name in subscriptions}
            self._collect_garbage()
            self._changed.notify_all()

    # -- sources ----------------------------------------------------------------------

    def append(
        self,
        source: str,
        segment: NewSegment | None,
        checkpoint: Checkpoint | None = None,
        stop: threading.Event | None = None,
        target: str | None = None,
    ) -> bool:
        """Keep ``segment`` and move ``source``'s checkpoint, in one transaction. Events
        of a type no enabled webhook takes are not kept; with ``target``, the segment is
        for that webhook alone (a dead-letter replay).

        Blocks while the spool is full and ``when_full`` is ``block``; returns False
        (keeping nothing) if ``stop`` is set while waiting.
        """
        wanted = self._codes.get(target, "") if target else "".join(self._codes.values())
        types, body = segment.keeping(wanted) if segment else ("", b"")
        now = time.time()
        with self._changed:
            if types and not self._make_room(len(body), stop):
                return False
            with self._transaction():
                if types:
                    self._db.execute(
                        "INSERT INTO segments (count, types, body, created, target)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (len(types), types, body, now, target),
                    )
                if checkpoint is not None:
                    self._write_checkpoint(source, checkpoint, now)
            if types:
                self._bytes += len(body)
                self._newest_known = self._newest_seq()
                for name, codes in self._codes.items():
                    if target in (None, name):
                        self._backlog[name] += sum(types.count(code) for code in codes)
                self._changed.notify_all()
        return True

    def checkpoints(self, source: str) -> dict[str, Checkpoint]:
        """The checkpoints of one source, by file identity."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT key, path, offset, fingerprint FROM checkpoints WHERE source = ?",
                (source,),
            ).fetchall()
        return {key: Checkpoint(key, path, offset, bytes(fp)) for key, path, offset, fp in rows}

    def forget_checkpoints(self, source: str, keys: Iterable[str]) -> None:
        """Drop the checkpoints of files that are gone for good."""
        with self._lock, self._transaction():
            self._db.executemany(
                "DELETE FROM checkpoints WHERE source = ? AND key = ?",
                [(source, key) for key in keys],
            )

    # -- sinks ------------------------------------------------------------------------

    def wait_pending(self, webhook: str, timeout: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout`` s for ``webhook`` to have at least one pending event,
        or for ``stop`` (see ``wake``)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._closed or stop.is_set() or self._backlog.get(webhook, 0) > 0,
                timeout,
            )

    def wake(self) -> None:
        """Wake every waiter, so one that is stopping notices at once."""
        with self._changed:
            self._changed.notify_all()

    def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for new events (or a close)."""
        with self._changed:
            self._changed.wait(timeout)

    def next_batch(self, webhook: str, max_events: int, max_bytes: int) -> Batch | None:
        """Form and record the next batch: the oldest pending events of the webhook's
        types, as one JSON array within the limits (one event always fits)."""
        with self._lock:
            codes = self._codes.get(webhook)
            if not codes or self._closed:
                return None
            start = self._cursors[webhook]
            body, end, counts = self._gather(webhook, start, None, codes, max_events, max_bytes)
            if not counts:
                if end != start:  # only events of other types: step over them
                    self._move_cursor(webhook, end, 0)
                return None
            batch = Batch(new_webhook_id(), start, end, codes, body, counts, time.time(), 0)
            self._record(webhook, batch)
            return batch

    def open_batch(self, webhook: str) -> Batch | None:
        """The batch ``webhook`` has in flight, from this run or an earlier one."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT webhook_id, start_position, end_position, codes, body, type_counts,"
                " created, attempts FROM batches WHERE webhook = ?",
                (webhook,),
            ).fetchone()
            if row is None:
                return None
            webhook_id, start, end, codes, body, counts, created, attempts = row
            if body is None:
                body, _, _ = self._gather(webhook, start, end, codes, 1 << 30, 1 << 62)
            return Batch(
                webhook_id,
                start,
                end,
                codes,
                bytes(body),
                _parse_counts(counts),
                created,
                attempts,
            )

    def count_attempt(self, webhook: str) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE batches SET attempts = attempts + 1 WHERE webhook = ?", (webhook,)
            )

    def finish_batch(self, webhook: str, batch: Batch) -> None:
        """The batch was delivered or dead-lettered: drop it and move the cursor past it."""
        with self._changed:
            self._move_cursor(webhook, batch.end_position, batch.count)
            self._changed.notify_all()

    def probe(self) -> None:
        """After a failed write, try a small one, so readiness comes back by itself when
        space returns even if nothing else needs writing."""
        with self._lock:
            if self.writable or self._closed:
                return
            try:
                with self._transaction():
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (str(time.time()),)
                    )
            except StateError:
                return  # still full; readiness stays off

    def refresh(self) -> None:
        """Notice segments another process added (``tailhook dead-letter replay``)."""
        with self._changed:
            if self._closed:
                return
            newest = self._newest_seq()
            if newest == self._newest_known:
                return
            self._newest_known = newest
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM segments")
            self._bytes = int(row.fetchone()[0])
            self._backlog = {name: self._count_pending(name) for name in self._codes}
            self._changed.notify_all()

    # -- observing --------------------------------------------------------------------

    def backlog(self, webhook: str) -> int:
        with self._lock:
            return self._backlog.get(webhook, 0)

    def update_gauges(self) -> None:
        """Refresh the spool and per-webhook backlog gauges."""
        now = time.time()
        with self._lock:
            if self._closed:
                return
            self._metrics.spool_bytes.set(self._bytes)
            for name in self._codes:
                self._metrics.backlog.labels(webhook=name).set(self._backlog[name])
                oldest = self._oldest_pending(name)
                age = 0.0 if oldest is None else max(0.0, now - oldest)
                self._metrics.oldest_age.labels(webhook=name).set(age)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._db.close()

    # -- internals (the lock is held) -------------------------------------------------

    def _transaction(self) -> _Transaction:
        self._check_open()
        return _Transaction(self._db, self._wrote)

    def _wrote(self, ok: bool) -> None:
        if ok != self.writable:
            self.writable = ok
            if ok:
                log.warning("The spool can be written again")

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("the spool is closed")

    def _newest_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'segments'")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def _segment(self, seq: int) -> _Segment | None:
        cached = self._cache.get(seq)
        if cached is not None:
            return cached
        row = self._db.execute(
            "SELECT types, body, created, target FROM segments WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            return None
        types, body, created, target = row
        segment = _Segment.parse(types, bytes(body), created, target)
        if len(self._cache) >= CACHED_SEGMENTS:
            del self._cache[min(self._cache)]
        self._cache[seq] = segment
        return segment

    def _gather(
        self,
        webhook: str,
        start: int,
        end: int | None,
        codes: str,
        max_events: int,
        max_bytes: int,
    ) -> tuple[bytes, int, dict[str, int]]:
        """The body of the events of types ``codes`` from position ``start``: up to
        ``end`` when given (rebuilding a recorded batch), else within the limits.
        Returns the body, the position after the last event looked at, and the count
        per type."""
        parts: list[bytes] = []
        taken = 0
        size = 1  # "[", then each event with the "," or "]" after it
        counts: dict[str, int] = {}
        seq, index = start >> INDEX_BITS, start & INDEX_MASK
        reached = start
        while taken < max_events and (end is None or reached < end):
            segment = self._segment(seq)
            if segment is None:
                break
            stop = segment.count
            if end is not None and seq == end >> INDEX_BITS:
                stop = end & INDEX_MASK
            runs: list[bytes]
            if segment.target is not None and segment.target != webhook:
                runs, after = [], stop  # another webhook's replay
            else:
                runs, after = segment.take(
                    index, stop, codes, max_events - taken, max_bytes - size, first=not parts
                )
            for code in codes if runs else ():
                n = segment.types.count(code, index, after)
                if n:
                    counts[CODE_TYPES[code]] = counts.get(CODE_TYPES[code], 0) + n
                    taken += n
            parts.extend(runs)
            size += sum(len(run) + 1 for run in runs)
            if after < segment.count:
                reached = position(seq, after)
                if end is None or after < stop or reached >= end:
                    break
            else:
                reached = position(seq + 1, 0)
            seq, index = seq + 1, 0
        return b"[" + b",".join(parts) + b"]", reached, counts

    def _record(self, webhook: str, batch: Batch) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (
                    webhook,
                    batch.webhook_id,
                    batch.start_position,
                    batch.end_position,
                    batch.codes,
                    _format_counts(batch.type_counts),
                    batch.created,
                    batch.attempts,
                ),
            )

    def _move_cursor(self, webhook: str, end: int, delivered: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM batches WHERE webhook = ?", (webhook,))
            self._db.execute(
                "UPDATE cursors SET position = MAX(position, ?) WHERE webhook = ?",
                (end, webhook),
            )
        if webhook in self._cursors:
            self._cursors[webhook] = max(self._cursors[webhook], end)
            self._backlog[webhook] = max(0, self._backlog[webhook] - delivered)
        self._collect_garbage()

    def _keep_bodies_before(self, limit: int) -> None:
        """Store the body of every batch in flight that starts before ``limit``: the
        segments it is rebuilt from are about to go."""
        rows = self._db.execute(
            "SELECT webhook, start_position, end_position, codes FROM batches"
            " WHERE body IS NULL AND start_position < ?",
            (limit,),
        ).fetchall()
        for webhook, start, end, codes in rows:
            body, _, _ = self._gather(webhook, start, end, codes, 1 << 30, 1 << 62)
            self._db.execute("UPDATE batches SET body = ? WHERE webhook = ?", (body, webhook))

    def _count_pending(self, webhook: str) -> int:
        codes, cursor = self._codes[webhook], self._cursors[webhook]
        total = 0
        rows = self._db.execute(
            "SELECT seq, types FROM segments WHERE seq >= ? AND COALESCE(target, ?) = ?",
            (cursor >> INDEX_BITS, webhook, webhook),
        )
        for seq, types in rows.fetchall():
            start = cursor & INDEX_MASK if seq == cursor >> INDEX_BITS else 0
            total += sum(types.count(code, start) for code in codes)
        return total

    def _oldest_pending(self, webhook: str) -> float | None:
        if not self._backlog[webhook]:
            return None
        cursor = self._cursors[webhook]
        row = self._db.execute(
            "SELECT created FROM segments WHERE seq >= ? ORDER BY seq LIMIT 1",
            (cursor >> INDEX_BITS,),
        ).fetchone()
        return None if row is None else float(row[0])

    def _write_checkpoint(self, source: str, checkpoint: Checkpoint, now: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
            (
                source,
                checkpoint.key,
                checkpoint.path,
                checkpoint.offset,
                checkpoint.fingerprint,
                now,
            ),
        )

    def _collect_garbage(self) -> None:
        """Delete the segments every enabled webhook has passed (all, if none is enabled)."""
        floor = min(self._cursors.values(), default=position(self._newest_seq() + 1, 0))
        self._delete_before(floor >> INDEX_BITS)

    def _delete_before(self, seq: int) -> int:
        """Delete every segment older than ``seq``; returns the bytes freed."""
        with self._transaction():
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM segments WHERE seq < ?", (seq,)
            ).fetchone()
            if row[0]:
                self._db.execute("DELETE FROM segments WHERE seq < ?", (seq,))
        for cached in [s for s in self._cache if s < seq]:
            del self._cache[cached]
        freed = int(row[0])
        self._bytes -= freed
        self._metrics.spool_bytes.set(self._bytes)
        return freed

    def _make_room(self, size: int, stop: threading.Event | None) -> bool:
        if self._bytes + size <= self.max_bytes or self._bytes == 0:
            return True
        if self.when_full == "drop_oldest":
            self._drop_oldest(self._bytes + size - self.max_bytes)
            return True
        log.warning(
            "The spool is full; sources wait until webhooks deliver",
            extra=fields(spool_bytes=self._bytes, max_bytes=self.max_bytes),
        )
        while self._bytes + size > self.max_bytes and self._bytes > 0:
            if self._closed or (stop is not None and stop.is_set()):
                return False
            self._changed.wait(0.5)
        return True

    def _drop_oldest(self, need: int) -> None:
        """Discard the oldest segments until ``need`` bytes are free; count the events
        that some webhook had not yet delivered."""
        freed = dropped = 0
        rows = self._db.execute(
            "SELECT seq, types, target, LENGTH(body) FROM segments ORDER BY seq"
        )
        doomed = []
        for seq, types, target, length in rows.fetchall():
            if freed >= need:
                break
            doomed.append((seq, types, target))
            freed += length
        if not doomed:
            return
        for seq, types, target in doomed:
            for index, code in enumerate(types):
                here = position(seq, index)
                waiting = [
                    name
                    for name, codes in self._codes.items()
                    if code in codes and here >= self._cursors[name] and target in (None, name)
                ]
                dropped += bool(waiting)
                for name in waiting:
                    self._backlog[name] -= 1
        after = position(doomed[-1][0] + 1, 0)
        self._keep_bodies_before(after)
        for name in self._cursors:
            if self._cursors[name] < after:
                self._cursors[name] = after
                self._db.execute("UPDATE cursors SET position = ? WHERE webhook = ?", (after, name))
        self._delete_before(after >> INDEX_BITS)
        self._metrics.spool_dropped.inc(dropped)
        log.error(
            "The spool is full; dropped the oldest undelivered events",
            extra=fields(dropped=dropped, max_bytes=self.max_bytes),
        )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back and turned into StateError on failure.
    Nested use joins the transaction already open."""

    def __init__(self, db: sqlite3.Connection, report: Callable[[bool], None]) -> None:
        self._db = db
        self._report = report
        self._outer = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._outer = True
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._report(False)
                raise StateError(f"cannot write the spool: {exc}") from exc

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if not self._outer:
            return
        if error is not None:
            self._rollback()
            if isinstance(error, sqlite3.Error):
                self._report(False)
                raise StateError(f"cannot write the spool: {error}") from error
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._report(False)
            raise StateError(f"cannot write the spool: {exc}") from exc
        self._report(True)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("Rolling back a failed spool write failed", exc_info=True)


#: SQLite's names for a file that is not, or no longer, a sound database.
DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("PRAGMA quick_check found damage")
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _open_database(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (or create) the spool database; a damaged one is moved aside and replaced.

    Returns the connection and whether a damaged database was replaced. Anything else
    (permissions, a full disk) is a StateError: starting without the spool could only
    lose data.
    """
    try:
        return _connect(path), False
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name not in DAMAGED and "quick_check" not in str(exc):
            raise StateError(f"cannot open the spool at {path}: {exc}") from exc
        damaged = exc
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the spool at {path}: {exc}") from exc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    log.error(
        "The spool was damaged and has been replaced by an empty one; events it held and"
        " not yet delivered are lost, and files are read again from their start",
        extra=fields(spool=str(path), kept_as=str(aside), error=str(damaged)),
    )
    try:
        return _connect(path), True
    except sqlite3.Error as exc:
        raise StateError(f"cannot create a new spool at {path}: {exc}") from exc


def _format_counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{kind}={n}" for kind, n in sorted(counts.items()))


def _parse_counts(text: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {kind: int(n) for kind, n in pairs}
