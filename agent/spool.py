"""The spool: tailhook's one owner of durable state (SQLite, in ``state_dir/spool.db``).

What it keeps, all in one database so that one transaction can cover them together:

- ``events``: accepted notifications, by a sequence number that only grows
  (AUTOINCREMENT, so a number is never reused after the table empties);
- ``checkpoints``: per source and file identity, the offset up to which lines were read.
  A checkpoint is written in the same transaction as the events read up to it, so a
  crash can neither skip a line nor record it twice on the way in;
- ``cursors``: per webhook, the last sequence number it delivered (or dead-lettered);
- ``batches``: per webhook, the batch in flight: its ``webhook-id`` and exact body, so a
  retry, after a restart too, sends the same bytes under the same id.

An event leaves the spool once every enabled webhook's cursor has passed it. The
database runs in WAL mode with ``synchronous=NORMAL``: a killed process loses nothing
that was committed; a power cut may roll back the newest commits, but offsets roll back
with the events they cover, so lines are read again rather than lost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StateError
from agent.telemetry import Metrics, fields

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL
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
CREATE TABLE IF NOT EXISTS cursors (
    webhook TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    webhook TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    type_counts TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Checkpoint:
    """How far one file has been read: complete lines up to ``offset``."""

    key: str  # the file's identity, "DEV:INODE"
    path: str  # where it was last seen, for people reading the state
    offset: int
    fingerprint: bytes  # the file's first bytes, to tell a reused inode from the same file


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    type: str
    body: bytes
    created: float


@dataclass(frozen=True)
class Batch:
    """One request's worth of events for one webhook, fixed once recorded."""

    webhook_id: str
    last_seq: int
    body: bytes
    type_counts: Mapping[str, int]
    created: float
    attempts: int

    @property
    def count(self) -> int:
        return sum(self.type_counts.values())


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
        self._subscriptions: dict[str, frozenset[str]] = {}
        self._wanted: frozenset[str] = frozenset()
        self._cursors: dict[str, int] = {}
        self._backlog: dict[str, int] = {}
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the spool at {path}: {exc}") from exc
        self._bytes: int = row[0]
        self._metrics.spool_bytes.set(self._bytes)

    # -- webhooks ---------------------------------------------------------------------

    def configure_webhooks(self, subscriptions: Mapping[str, frozenset[str]]) -> None:
        """Set the enabled webhooks and their event types.

        A webhook seen for the first time starts after the newest event kept; a webhook
        no longer enabled loses its cursor and batch, and with them its claim on events.
        """
        with self._changed:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                newest = self._newest_seq()
                known = dict(db.execute("SELECT webhook, seq FROM cursors").fetchall())
                for name in known.keys() - subscriptions.keys():
                    db.execute("DELETE FROM cursors WHERE webhook = ?", (name,))
                    db.execute("DELETE FROM batches WHERE webhook = ?", (name,))
                for name in subscriptions.keys() - known.keys():
                    db.execute("INSERT INTO cursors VALUES (?, ?)", (name, newest))
                    known[name] = newest
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StateError(f"cannot write the spool: {exc}") from exc
            self._subscriptions = dict(subscriptions)
            self._wanted = frozenset().union(*subscriptions.values())
            self._cursors = {name: known[name] for name in subscriptions}
            self._backlog = {
                name: self._count_pending(name, types) for name, types in subscriptions.items()
            }
            self._collect_garbage()
            self._changed.notify_all()
        self.update_gauges()

    # -- sources ----------------------------------------------------------------------

    def append(
        self,
        source: str,
        events: Sequence[tuple[str, bytes]],
        checkpoint: Checkpoint | None = None,
        stop: threading.Event | None = None,
    ) -> bool:
        """Keep ``events`` and move ``source``'s checkpoint, in one transaction.

        Events of a type no enabled webhook subscribes to are not kept.

        Blocks while the spool is full and ``when_full`` is ``block``; returns False
        (keeping nothing) if ``stop`` is set while waiting.
        """
        now = time.time()
        wanted = self._wanted
        events = [event for event in events if event[0] in wanted]
        size = sum(len(body) for _, body in events)
        with self._changed:
            if not self._make_room(size, stop):
                return False
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                if events:
                    db.executemany(
                        "INSERT INTO events (type, body, created) VALUES (?, ?, ?)",
                        [(kind, body, now) for kind, body in events],
                    )
                if checkpoint is not None:
                    self._write_checkpoint(source, checkpoint, now)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StateError(f"cannot write the spool: {exc}") from exc
            self._bytes += size
            for name, types in self._subscriptions.items():
                self._backlog[name] += sum(1 for kind, _ in events if kind in types)
            if events:
                self._changed.notify_all()
        return True

    def checkpoints(self, source: str) -> dict[str, Checkpoint]:
        """The checkpoints of one source, by file identity."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, path, offset, fingerprint FROM checkpoints WHERE source = ?",
                (source,),
            ).fetchall()
        return {key: Checkpoint(key, path, offset, bytes(fp)) for key, path, offset, fp in rows}

    def forget_checkpoints(self, source: str, keys: Iterable[str]) -> None:
        """Drop the checkpoints of files that are gone for good."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM checkpoints WHERE source = ? AND key = ?",
                [(source, key) for key in keys],
            )

    # -- sinks ------------------------------------------------------------------------

    def pending(self, webhook: str, limit: int) -> list[PendingEvent]:
        """Up to ``limit`` of the oldest events ``webhook`` has not delivered, in order."""
        with self._lock:
            return self._pending_locked(webhook, limit)

    def wait_pending(self, webhook: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``webhook`` to have at least one pending event."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._closed or self._backlog.get(webhook, 0) > 0, timeout
            )

    def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for new events (or a close)."""
        with self._changed:
            self._changed.wait(timeout)

    def open_batch(self, webhook: str) -> Batch | None:
        """The batch ``webhook`` has in flight, from this run or an earlier one."""
        with self._lock:
            row = self._db.execute(
                "SELECT webhook_id, last_seq, body, type_counts, created, attempts"
                " FROM batches WHERE webhook = ?",
                (webhook,),
            ).fetchone()
        if row is None:
            return None
        webhook_id, last_seq, body, counts, created, attempts = row
        return Batch(webhook_id, last_seq, bytes(body), _parse_counts(counts), created, attempts)

    def record_batch(self, webhook: str, batch: Batch) -> None:
        """Fix a batch before its first attempt, so every retry sends the same bytes."""
        self._execute(
            "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                webhook,
                batch.webhook_id,
                batch.last_seq,
                batch.body,
                _format_counts(batch.type_counts),
                batch.created,
                batch.attempts,
            ),
        )

    def count_attempt(self, webhook: str) -> None:
        self._execute("UPDATE batches SET attempts = attempts + 1 WHERE webhook = ?", (webhook,))

    def finish_batch(self, webhook: str, batch: Batch) -> None:
        """The batch was delivered or dead-lettered: drop it and move the cursor past it."""
        with self._changed:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM batches WHERE webhook = ?", (webhook,))
                db.execute(
                    "UPDATE cursors SET seq = MAX(seq, ?) WHERE webhook = ?",
                    (batch.last_seq, webhook),
                )
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StateError(f"cannot write the spool: {exc}") from exc
            if webhook in self._cursors:
                self._cursors[webhook] = max(self._cursors[webhook], batch.last_seq)
                self._backlog[webhook] = max(0, self._backlog[webhook] - batch.count)
            self._collect_garbage()
            self._changed.notify_all()

    def skip_unsubscribed(self, webhook: str) -> None:
        """Move the cursor past events of types ``webhook`` does not take, so they can go."""
        with self._changed:
            if self._backlog.get(webhook, 1) != 0:
                return
            newest = self._newest_seq()
            if newest > self._cursors.get(webhook, newest):
                self._db.execute("UPDATE cursors SET seq = ? WHERE webhook = ?", (newest, webhook))
                self._cursors[webhook] = newest
                self._collect_garbage()

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
            for name, types in self._subscriptions.items():
                self._metrics.backlog.labels(webhook=name).set(self._backlog[name])
                oldest = self._oldest_pending_created(name, types)
                age = 0.0 if oldest is None else max(0.0, now - oldest)
                self._metrics.oldest_age.labels(webhook=name).set(age)

    @property
    def bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._db.close()

    # -- internals (the lock is held) -------------------------------------------------

    def _execute(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StateError(f"cannot write the spool: {exc}") from exc

    def _newest_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def _pending_locked(self, webhook: str, limit: int) -> list[PendingEvent]:
        types = self._subscriptions.get(webhook)
        if not types or self._closed:
            return []
        marks = ",".join("?" * len(types))
        rows = self._db.execute(
            f"SELECT seq, type, body, created FROM events WHERE seq > ? AND type IN ({marks})"
            " ORDER BY seq LIMIT ?",
            (self._cursors[webhook], *sorted(types), limit),
        ).fetchall()
        return [PendingEvent(seq, kind, bytes(body), created) for seq, kind, body, created in rows]

    def _count_pending(self, webhook: str, types: frozenset[str]) -> int:
        if not types:
            return 0
        marks = ",".join("?" * len(types))
        row = self._db.execute(
            f"SELECT COUNT(*) FROM events WHERE seq > ? AND type IN ({marks})",
            (self._cursors[webhook], *sorted(types)),
        ).fetchone()
        return int(row[0])

    def _oldest_pending_created(self, webhook: str, types: frozenset[str]) -> float | None:
        if not types or self._backlog[webhook] == 0:
            return None
        marks = ",".join("?" * len(types))
        row = self._db.execute(
            f"SELECT created FROM events WHERE seq > ? AND type IN ({marks}) ORDER BY seq LIMIT 1",
            (self._cursors[webhook], *sorted(types)),
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
        """Delete events every enabled webhook has passed (all of them if none is enabled)."""
        floor = min(self._cursors.values(), default=self._newest_seq())
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE seq <= ?", (floor,)
        ).fetchone()
        if row[0]:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (floor,))
            self._bytes -= int(row[1])
            self._metrics.spool_bytes.set(self._bytes)

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
        dropped = 0
        freed = 0
        doomed: list[tuple[int, str]] = []
        after = 0
        while freed < need:
            rows = self._db.execute(
                "SELECT seq, type, LENGTH(body) FROM events WHERE seq > ? ORDER BY seq LIMIT 1000",
                (after,),
            ).fetchall()
            if not rows:
                break
            for seq, kind, length in rows:
                if freed >= need:
                    break
                doomed.append((seq, kind))
                freed += length
            after = rows[-1][0]
        if not doomed:
            return
        last = doomed[-1][0]
        self._db.execute("DELETE FROM events WHERE seq <= ?", (last,))
        for seq, kind in doomed:
            dropped += 1
            for name, types in self._subscriptions.items():
                if kind in types and seq > self._cursors[name]:
                    self._backlog[name] -= 1
        self._bytes -= freed
        self._metrics.spool_dropped.inc(dropped)
        log.error(
            "The spool is full; dropped the oldest undelivered events",
            extra=fields(dropped=dropped, max_bytes=self.max_bytes),
        )


def _format_counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{kind}={n}" for kind, n in sorted(counts.items()))


def _parse_counts(text: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {kind: int(n) for kind, n in pairs}
