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
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.errors import StateError
from agent.spool.database import Transaction, open_database
from agent.spool.segments import (
    CACHED_SEGMENTS,
    CODE_TYPES,
    INDEX_BITS,
    INDEX_MASK,
    TYPE_CODES,
    Batch,
    Checkpoint,
    NewSegment,
    StoredSegment,
    format_counts,
    new_webhook_id,
    parse_counts,
    position,
)
from agent.telemetry import Metrics, fields
from agent.worker import heartbeat

__all__ = ["Batch", "Checkpoint", "NewSegment", "Spool", "new_webhook_id"]

log = logging.getLogger(__name__)


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
        self._cache: dict[int, StoredSegment] = {}
        self._newest_known = 0
        #: False while writes fail (a full disk): /readyz says so; reset by the next write.
        self.writable = True
        self._db, self.recovered = open_database(path)
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
        types, body, starts = segment.keeping(wanted) if segment else ("", b"", b"")
        now = time.time()
        with self._changed:
            if types and not self._make_room(len(body), stop):
                return False
            with self._transaction():
                if types:
                    self._db.execute(
                        "INSERT INTO segments (count, types, body, starts, created, target)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (len(types), types, body, starts, now, target),
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
                parse_counts(counts),
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

    def _transaction(self) -> Transaction:
        self._check_open()
        return Transaction(self._db, self._wrote)

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

    def _segment(self, seq: int) -> StoredSegment | None:
        cached = self._cache.get(seq)
        if cached is not None:
            return cached
        row = self._db.execute(
            "SELECT types, body, starts, created, target FROM segments WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            return None
        types, body, starts, created, target = row
        segment = StoredSegment.load(types, bytes(body), bytes(starts), created, target)
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
                    format_counts(batch.type_counts),
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
            heartbeat()  # the source waits for room: it is not stuck
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
