"""Ingest: keeping what sources read, with the checkpoints that cover it.

A segment and the checkpoint of the file it was read from are written in one
transaction, so a crash can neither skip a line nor keep it twice on the way in. The
segment must fit ``spool.db``'s share of ``max_bytes`` (see ``capacity``): with
``when_full: drop_oldest`` the oldest events are dropped first, in the same transaction;
with ``block`` nothing is written and the source waits. Whether it fitted is measured,
not guessed: the segment is written under a savepoint and taken back if the file would
have grown past its share. An empty spool takes a segment whatever its size, or a single
event larger than the spool's room could never be kept.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.spool.capacity import Budget, drop_oldest, has_room, pages_in_use
from agent.spool.cursors import Change, Ledger, newest_seq
from agent.spool.routes import Routing
from agent.spool.segments import Checkpoint, Kept, NewSegment, position
from agent.telemetry import fields

log = logging.getLogger(__name__)

#: A segment's row besides its columns' bytes: the record header, rowid, count, created.
ROW_OVERHEAD = 64


@dataclass(frozen=True)
class Incoming:
    """A source's read, as the spool keeps it: the events some webhook takes."""

    source: str
    types: str  # one letter per event; empty: only the checkpoint moves
    body: bytes
    starts: bytes
    checkpoint: Checkpoint | None
    target: str | None  # only for this webhook (a dead-letter replay)
    created: float
    views: Mapping[str, str] = field(default_factory=dict)  # filtered webhooks' views
    views_column: str | None = None  # ``views`` as stored
    fields_column: str | None = None  # vulnerabilities' line fields, as stored
    # (webhook, event type) -> events its filter excluded, counted once this is kept
    excluded: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        source: str,
        kept: Kept,
        checkpoint: Checkpoint | None,
        target: str | None,
        created: float,
    ) -> Incoming:
        views, fields = kept.encoded()
        return cls(
            source,
            kept.types,
            kept.body,
            kept.starts,
            checkpoint,
            target,
            created,
            views=kept.views,
            views_column=views,
            fields_column=fields,
            excluded=kept.excluded,
        )

    @classmethod
    def routed(
        cls,
        source: str,
        segment: NewSegment | None,
        checkpoint: Checkpoint | None,
        target: str | None,
        routing: Routing,
    ) -> Incoming:
        """What of ``segment`` is kept under ``routing``: for a ``target``, the events of
        its types; else those some webhook takes, by type and by filter."""
        if segment is None:
            kept = Kept("", b"", b"", {}, {})
        elif target:
            kept = segment.keeping(routing.codes.get(target, ""))
        else:
            kept = segment.keeping(routing.unfiltered_codes, routing.filters)
        return cls.of(source, kept, checkpoint, target, time.time())

    @property
    def record_bytes(self) -> int:
        extra = len(self.views_column or "") + len(self.fields_column or "")
        return len(self.body) + len(self.types) + len(self.starts) + extra + ROW_OVERHEAD


def keep(
    db: sqlite3.Connection, ledger: Ledger, budget: Budget, drop: bool, incoming: Incoming
) -> tuple[bool, Change]:
    """Keep ``incoming`` and move its checkpoint, inside the caller's transaction.
    Returns whether it was kept (False: no room, nothing of it written) and the change,
    which holds what was dropped to make room even when it was not kept."""
    change = Change()
    if incoming.types:
        need = budget.room_needed(incoming.record_bytes)
        for _ in range(2):  # a second time only if it took more pages than foreseen
            if drop:
                change.merge(drop_oldest(db, ledger.after(change), budget, need))
            elif not has_room(db, budget, need) and ledger.held_bytes:
                return False, change
            empty = ledger.held_bytes + change.held_bytes == 0
            shortfall = _insert(db, budget, incoming, change, empty)
            if not shortfall:
                break
            need += shortfall
        else:
            return False, change
        for name, codes in ledger.codes.items():
            if incoming.target in (None, name):
                types = incoming.views.get(name, incoming.types)
                change.add_backlog(name, sum(types.count(code) for code in codes))
    if incoming.checkpoint is not None:
        write_checkpoint(db, incoming.source, incoming.checkpoint, incoming.created)
    return True, change


class NoRoom(Exception):
    """Targeted segments do not fit the spool: their transaction is rolled back."""


def keep_targeted(
    db: sqlite3.Connection,
    ledger: Ledger,
    budget: Budget,
    incoming: Sequence[Incoming],
    add_cursor: bool,
) -> Change:
    """Keep every targeted segment (a replay, an announcement) inside the caller's
    transaction, or raise NoRoom; with ``add_cursor``, a target without a cursor gets
    one at the first of them, so its next start does not skip them."""
    change = Change()
    first = newest_seq(db) + 1
    for one in incoming:
        kept, step = keep(db, ledger.after(change), budget, False, one)
        if not kept:
            raise NoRoom
        change.merge(step)
    for webhook in {one.target for one in incoming} if add_cursor else ():
        db.execute("INSERT OR IGNORE INTO cursors VALUES (?, ?)", (webhook, position(first, 0)))
    return change


def _insert(
    db: sqlite3.Connection, budget: Budget, incoming: Incoming, change: Change, empty: bool
) -> int:
    """Write the segment; if ``spool.db`` would grow past its share, take it back and
    return by how many pages."""
    db.execute("SAVEPOINT segment")
    before, _ = pages_in_use(db)
    cursor = db.execute(
        "INSERT INTO segments (count, types, body, starts, created, target, views, fields)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            len(incoming.types),
            incoming.types,
            incoming.body,
            incoming.starts,
            incoming.created,
            incoming.target,
            incoming.views_column,
            incoming.fields_column,
        ),
    )
    after, _ = pages_in_use(db)
    over = after - max(before, budget.database_pages)
    if over > 0 and not empty:
        db.execute("ROLLBACK TO segment")
        db.execute("RELEASE segment")
        return over
    db.execute("RELEASE segment")
    if over > 0:
        log.warning(
            "A read larger than the spool's room was kept, as the spool held nothing else",
            extra=fields(source=incoming.source, bytes=len(incoming.body)),
        )
    assert cursor.lastrowid is not None
    change.newest_seq = cursor.lastrowid
    change.held_bytes += len(incoming.body)
    return 0


def write_checkpoint(
    db: sqlite3.Connection, source: str, checkpoint: Checkpoint, now: float
) -> None:
    db.execute(
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


def read_checkpoints(db: sqlite3.Connection, source: str) -> dict[str, Checkpoint]:
    rows = db.execute(
        "SELECT key, path, offset, fingerprint FROM checkpoints WHERE source = ?", (source,)
    ).fetchall()
    return {key: Checkpoint(key, path, offset, bytes(fp)) for key, path, offset, fp in rows}


def forget_checkpoints(db: sqlite3.Connection, source: str, keys: Iterable[str]) -> None:
    db.executemany(
        "DELETE FROM checkpoints WHERE source = ? AND key = ?", [(source, key) for key in keys]
    )
