"""Cursors and batches: where each webhook is, the batch it has in flight, and deleting
what every webhook has passed.

The functions here read, or change the database inside the caller's transaction and
return a ``Change``; the spool applies it to its ``Ledger`` (the same state, in memory)
only once that transaction has committed, so a failed write leaves both as they were.

A segment is deleted once every enabled webhook's cursor has passed it, unless a batch
in flight is rebuilt from it: ``drop_oldest`` may move cursors past the segments of a
batch in flight, whose events are still delivered (so they are not dropped), and those
segments stay until that batch is finished.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from agent.spool.routes import Form
from agent.spool.segments import (
    CACHED_SEGMENTS,
    CODE_TYPES,
    INDEX_BITS,
    INDEX_MASK,
    Batch,
    StoredSegment,
    format_counts,
    parse_counts,
    position,
)

#: Segments that a batch in flight (its body not stored) is rebuilt from.
PINNED = (
    "EXISTS (SELECT 1 FROM batches AS b WHERE b.body IS NULL"
    " AND segments.seq BETWEEN b.start_position >> 24 AND (b.end_position - 1) >> 24)"
)


@dataclass
class Ledger:
    """The spool's state in memory, always equal to what the database says."""

    codes: dict[str, str] = field(default_factory=dict)  # webhook -> type letters it takes
    cursors: dict[str, int] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)
    held_bytes: int = 0  # bytes of the events held (tailhook_spool_bytes)
    newest_seq: int = 0

    def apply(self, change: Change) -> None:
        self.cursors.update(change.cursors)
        for name, delta in change.backlog.items():
            if name in self.backlog:
                self.backlog[name] += delta
        self.held_bytes += change.held_bytes
        self.newest_seq = max(self.newest_seq, change.newest_seq)

    def after(self, change: Change) -> Ledger:
        """A copy with ``change`` applied (for a step later in the same transaction)."""
        ahead = Ledger(dict(self.codes), dict(self.cursors), dict(self.backlog))
        ahead.held_bytes, ahead.newest_seq = self.held_bytes, self.newest_seq
        ahead.apply(change)
        return ahead


@dataclass
class Change:
    """What one committed transaction changed, for the ``Ledger``."""

    cursors: dict[str, int] = field(default_factory=dict)  # new positions
    backlog: dict[str, int] = field(default_factory=dict)  # added (or, negative, taken)
    held_bytes: int = 0  # added
    newest_seq: int = 0
    deleted: list[int] = field(default_factory=list)  # segments deleted
    dropped: int = 0  # events dropped to make room (when_full: drop_oldest)

    def add_backlog(self, webhook: str, delta: int) -> None:
        self.backlog[webhook] = self.backlog.get(webhook, 0) + delta

    def merge(self, later: Change) -> None:
        """Add what a later step of the same transaction changed."""
        self.cursors.update(later.cursors)
        for name, delta in later.backlog.items():
            self.add_backlog(name, delta)
        self.held_bytes += later.held_bytes
        self.newest_seq = max(self.newest_seq, later.newest_seq)
        self.deleted.extend(later.deleted)
        self.dropped += later.dropped


class Segments:
    """Stored segments, the newest few kept split into events."""

    def __init__(self) -> None:
        self._cache: dict[int, StoredSegment] = {}

    def get(self, db: sqlite3.Connection, seq: int) -> StoredSegment | None:
        cached = self._cache.get(seq)
        if cached is not None:
            return cached
        row = db.execute(
            "SELECT types, body, starts, created, target, views, fields FROM segments"
            " WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is None:
            return None
        types, body, starts, created, target, views, fields = row
        segment = StoredSegment.load(
            types, bytes(body), bytes(starts), created, target, views, fields
        )
        if len(self._cache) >= CACHED_SEGMENTS:
            del self._cache[min(self._cache)]
        self._cache[seq] = segment
        return segment

    def forget(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self._cache.pop(seq, None)

    def forget_all(self) -> None:
        self._cache.clear()

    def gather(
        self,
        db: sqlite3.Connection,
        webhook: str,
        start: int,
        end: int | None,
        codes: str,
        max_events: int,
        max_bytes: int,
        form: Form,
    ) -> Gathered:
        """The events ``webhook`` takes (of types ``codes``, its filter's view) from
        position ``start``: up to ``end`` when given (rebuilding a recorded batch), else
        within the limits, ``max_bytes`` bounding the body as ``form`` makes it."""
        stored: list[bytes] = []  # as stored: runs of events joined by newlines
        made: list[bytes] = []  # as sent, for a form that makes each event anew
        taken = 0
        size = 1  # "[", then each event with the "," or "]" after it
        counts: dict[str, int] = {}
        seq, index = start >> INDEX_BITS, start & INDEX_MASK
        reached = start
        each = form.payload != "classic"
        while taken < max_events and (end is None or reached < end):
            segment = self.get(db, seq)
            if segment is None:
                break
            stop = segment.count
            if end is not None and seq == end >> INDEX_BITS:
                stop = end & INDEX_MASK
            types = segment.view(webhook)
            runs: list[bytes]
            limits = (max_events - taken, max_bytes - size, not stored)
            if segment.target is not None and segment.target != webhook:
                runs, after = [], stop  # another webhook's replay
            elif each:
                runs, sent, after = segment.take_each(index, stop, types, codes, *limits, form)
                made.extend(sent)
                size += sum(len(one) + 1 for one in sent)
            else:
                runs, after = segment.take(index, stop, types, codes, *limits)
                size += sum(len(run) + 1 for run in runs)
            for code in codes if runs else ():
                n = types.count(code, index, after)
                if n:
                    counts[CODE_TYPES[code]] = counts.get(CODE_TYPES[code], 0) + n
                    taken += n
            stored.extend(runs)
            if after < segment.count:
                reached = position(seq, after)
                if end is None or after < stop or reached >= end:
                    break
            else:
                reached = position(seq + 1, 0)
            seq, index = seq + 1, 0
        events = b"[" + b",".join(run.replace(b"\n", b",") for run in stored) + b"]"
        if form.stored_as_is:
            body = events
        elif each:
            body = form.join(made)
        else:  # classic objects, one a line: as stored
            body = b"".join(run + b"\n" for run in stored)
        return Gathered(body, events, reached, counts)

    def read_batch(self, db: sqlite3.Connection, webhook: str) -> Batch | None:
        """The batch ``webhook`` has in flight, its body rebuilt (in the form recorded
        with it) unless stored."""
        row = db.execute(
            "SELECT webhook_id, start_position, end_position, codes, body, type_counts,"
            " created, attempts, form FROM batches WHERE webhook = ?",
            (webhook,),
        ).fetchone()
        if row is None:
            return None
        webhook_id, start, end, codes, body, counts, created, attempts, recorded = row
        form = Form.recorded(recorded)
        if body is None:
            body, events, _, _ = self.gather(db, webhook, start, end, codes, 1 << 30, 1 << 62, form)
        else:  # kept by an older layout: a JSON array of the objects as stored
            body = events = bytes(body)
        counted = parse_counts(counts)
        return Batch(webhook_id, start, end, codes, body, counted, created, attempts, form, events)


class Gathered(NamedTuple):
    """Events gathered for a batch: its body as sent, the same events as §5 objects in
    a JSON array, the position after the last event looked at, the count per type."""

    body: bytes
    events: bytes
    reached: int
    counts: dict[str, int]


def record_batch(db: sqlite3.Connection, webhook: str, batch: Batch) -> None:
    """Record a new batch: its range, types and form; its body is rebuilt from them."""
    db.execute(
        "INSERT OR REPLACE INTO batches (webhook, webhook_id, start_position, end_position,"
        " codes, body, type_counts, created, attempts, form)"
        " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
        (
            webhook,
            batch.webhook_id,
            batch.start_position,
            batch.end_position,
            batch.codes,
            format_counts(batch.type_counts),
            batch.created,
            batch.attempts,
            batch.form.record(),
        ),
    )


def finish_batch(db: sqlite3.Connection, ledger: Ledger, webhook: str, batch: Batch) -> Change:
    """Drop the batch and move the cursor past it. A batch already finished (or not
    this webhook's) changes nothing, so finishing twice counts it once."""
    gone = db.execute(
        "DELETE FROM batches WHERE webhook = ? AND webhook_id = ?", (webhook, batch.webhook_id)
    ).rowcount
    if not gone:
        return Change()
    change = move_cursor(db, ledger, webhook, batch.end_position)
    change.add_backlog(webhook, -batch.count)
    return change


def move_cursor(db: sqlite3.Connection, ledger: Ledger, webhook: str, end: int) -> Change:
    """Move ``webhook``'s cursor forward to ``end``, and collect what all have passed."""
    change = Change()
    db.execute("UPDATE cursors SET position = MAX(position, ?) WHERE webhook = ?", (end, webhook))
    if webhook in ledger.cursors and end > ledger.cursors[webhook]:
        change.cursors[webhook] = end
    collect_garbage(db, ledger, change)
    return change


def configure(
    db: sqlite3.Connection, ledger: Ledger, codes: Mapping[str, str]
) -> tuple[dict[str, int], Change]:
    """Give each webhook in ``codes`` a cursor (a new one starts after the newest event
    kept) and drop those of the others, with their batches. Returns every cursor and
    the change (the backlogs are counted again by the caller)."""
    start = position(newest_seq(db) + 1, 0)
    known = dict(db.execute("SELECT webhook, position FROM cursors").fetchall())
    for name in known.keys() - codes.keys():
        db.execute("DELETE FROM cursors WHERE webhook = ?", (name,))
        db.execute("DELETE FROM batches WHERE webhook = ?", (name,))
    for name in codes.keys() - known.keys():
        db.execute("INSERT INTO cursors VALUES (?, ?)", (name, start))
        known[name] = start
    cursors = {name: int(known[name]) for name in codes}
    change = Change(cursors=cursors)
    collect_garbage(db, Ledger(cursors=cursors), change)
    return cursors, change


def collect_garbage(db: sqlite3.Connection, ledger: Ledger, change: Change) -> None:
    """Delete the segments every enabled webhook has passed (all, if none is enabled),
    except those a batch in flight is rebuilt from; adds to ``change``."""
    cursors = {**ledger.cursors, **change.cursors}
    floor = min(cursors.values(), default=position(newest_seq(db) + 1, 0)) >> INDEX_BITS
    rows = db.execute(
        f"SELECT seq, LENGTH(body) FROM segments WHERE seq < ? AND NOT {PINNED}", (floor,)
    ).fetchall()
    if rows:
        db.execute(f"DELETE FROM segments WHERE seq < ? AND NOT {PINNED}", (floor,))
        change.deleted.extend(seq for seq, _ in rows)
        change.held_bytes -= sum(length for _, length in rows)


def newest_seq(db: sqlite3.Connection) -> int:
    found = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'segments'").fetchone()
    return int(found[0]) if found else 0


def held_bytes(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM segments").fetchone()[0])


def count_pending(db: sqlite3.Connection, webhook: str, codes: str, cursor: int) -> int:
    """Events of ``webhook``'s types from its cursor on (its batch in flight included)."""
    total = 0
    rows = db.execute(
        "SELECT seq, types, views FROM segments WHERE seq >= ? AND COALESCE(target, ?) = ?",
        (cursor >> INDEX_BITS, webhook, webhook),
    )
    for seq, types, views in rows.fetchall():
        if views is not None:
            types = orjson.loads(views).get(webhook, types)
        start = cursor & INDEX_MASK if seq == cursor >> INDEX_BITS else 0
        total += sum(types.count(code, start) for code in codes)
    return total


def oldest_pending(db: sqlite3.Connection, cursor: int) -> float | None:
    """When the oldest segment at or after ``cursor`` was kept."""
    row = db.execute(
        "SELECT created FROM segments WHERE seq >= ? ORDER BY seq LIMIT 1",
        (cursor >> INDEX_BITS,),
    ).fetchone()
    return None if row is None else float(row[0])
