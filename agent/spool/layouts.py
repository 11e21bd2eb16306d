"""The spool's tables, their layout version, and migrations from every older layout.

The ``meta`` row ``schema`` names the layout; layouts before "2" had none, and are told
apart by their tables:

- "0": a row per event (``events``); a cursor is the number of the last event delivered;
  a batch in flight keeps its body and the number of its last event.
- "1": events in segments (``segments``), cursors and batches by position
  (``segment << 24 | index``). Over its life it gained ``target`` (a replay's webhook),
  then ``starts`` (where each event begins, in the machine's byte order), and its
  batches went from a stored body and an end position to a position range with the body
  rebuilt from it.
- "2": ``starts`` little-endian (empty: worked out from the body when read), the
  ``meta`` row.
- "3" (current): segments gain ``views`` (filtered webhooks' views of the types) and
  ``fields`` (vulnerabilities' line fields), batches ``form`` (how the body is made).
  All three are NULL for what an older layout kept: no filter, no line fields, the
  classic JSON array.

``prepare`` creates a new spool or brings an older one to the current layout, one
migration step after another (``MIGRATIONS``, from version to function), inside the
caller's transaction: all of it happens, or none. A spool of a layout this code does not
know (written by a later tailhook) raises ``UnknownLayout``.
"""

from __future__ import annotations

import sqlite3
import sys
from bisect import bisect_right
from collections.abc import Callable

from agent.spool.segments import TYPE_CODES, event_starts, offsets_to_bytes, parse_counts, position

SCHEMA_VERSION = "3"

TABLES = (
    """CREATE TABLE segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    count INTEGER NOT NULL,
    types TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    starts BLOB NOT NULL,  -- where each event begins in body (32-bit little-endian)
    target TEXT,  -- NULL: for every webhook; else only for this one (a dead-letter replay)
    views TEXT,  -- JSON {webhook: its view of types, '-' for an event its filter excluded}
    fields TEXT  -- JSON {event index: a vulnerability's line fields}
)""",
    """CREATE TABLE checkpoints (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (source, key)
)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    BATCHES := """CREATE TABLE batches (
    webhook TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    start_position INTEGER NOT NULL,
    end_position INTEGER NOT NULL,
    codes TEXT NOT NULL,
    body BLOB,  -- NULL: rebuilt from the segments in the range
    type_counts TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL,
    form TEXT  -- NULL: the classic JSON array; else JSON: payload, body, identity
)""",
)


#: The columns of a batch up to layout "2", as the older migrations fill them.
BATCH_COLUMNS = (
    "webhook, webhook_id, start_position, end_position, codes, body, type_counts, created, attempts"
)


class UnknownLayout(sqlite3.DatabaseError):
    """The spool was written with a layout this tailhook does not know."""


def prepare(db: sqlite3.Connection) -> str | None:
    """Create the tables of a new spool, or migrate an older one; inside a transaction.
    Returns the layout the spool had (None: it was new)."""
    found = layout_of(db)
    if found is None:
        for statement in TABLES:
            db.execute(statement)
    else:
        version = found
        while version != SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise UnknownLayout(f"spool layout {version}, this tailhook uses {SCHEMA_VERSION}")
            version = step(db)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    return found


def layout_of(db: sqlite3.Connection) -> str | None:
    tables = _tables(db)
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None:
            return str(row[0])
    if "events" in tables:
        return "0"
    if "segments" in tables:
        return "1"
    return None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(info[1]) for info in db.execute(f"PRAGMA table_info({table})")}


def _codes_of(type_counts: str) -> str:
    return "".join(sorted(TYPE_CODES[kind] for kind in parse_counts(type_counts)))


# -- "0" -> "1": rows per event become segments ------------------------------------------

#: Events per segment made from rows of layout "0".
MIGRATED_SEGMENT_EVENTS = 1000


def _from_rows_per_event(db: sqlite3.Connection) -> str:
    db.execute(TABLES[0])
    numbers: list[int] = []  # every event's old number, in order
    rows = db.execute("SELECT seq, type, body, created FROM events ORDER BY seq")
    while chunk := rows.fetchmany(MIGRATED_SEGMENT_EVENTS):
        body = b"\n".join(bytes(event) for _, _, event, _ in chunk)
        db.execute(
            "INSERT INTO segments (seq, count, types, body, created, starts, target)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (
                len(numbers) // MIGRATED_SEGMENT_EVENTS + 1,
                len(chunk),
                "".join(TYPE_CODES[kind] for _, kind, _, _ in chunk),
                body,
                chunk[0][3],
                offsets_to_bytes(event_starts(body)),
            ),
        )
        numbers.extend(seq for seq, _, _, _ in chunk)

    def after(last_delivered: int) -> int:
        """The position of the first event numbered above ``last_delivered``."""
        index = bisect_right(numbers, last_delivered)
        if index == len(numbers):
            return position(-(-index // MIGRATED_SEGMENT_EVENTS) + 1, 0)
        return position(index // MIGRATED_SEGMENT_EVENTS + 1, index % MIGRATED_SEGMENT_EVENTS)

    cursors = {webhook: after(seq) for webhook, seq in db.execute("SELECT * FROM cursors")}
    batches = db.execute(
        "SELECT webhook, webhook_id, last_seq, body, type_counts, created, attempts FROM batches"
    ).fetchall()
    for table in ("events", "cursors", "batches"):
        db.execute(f"DROP TABLE {table}")
    db.execute(TABLES[3])
    db.execute(BATCHES)
    db.executemany("INSERT INTO cursors VALUES (?, ?)", cursors.items())
    for webhook, webhook_id, last_seq, body, counts, created, attempts in batches:
        start = cursors.get(webhook, after(last_seq))
        db.execute(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                webhook,
                webhook_id,
                start,
                after(last_seq),
                _codes_of(counts),
                body,
                counts,
                created,
                attempts,
            ),
        )
    return "1"


# -- "1" -> "2": starts in a fixed byte order, batches by range, meta ---------------------


def _to_current_columns(db: sqlite3.Connection) -> str:
    columns = _columns(db, "segments")
    if "target" not in columns:
        db.execute("ALTER TABLE segments ADD COLUMN target TEXT")
    if "starts" not in columns:
        db.execute("ALTER TABLE segments ADD COLUMN starts BLOB NOT NULL DEFAULT x''")
    elif sys.byteorder == "big":  # stored in this machine's order: work them out again
        db.execute("UPDATE segments SET starts = x''")
    if "start_position" not in _columns(db, "batches"):
        _batches_with_ranges(db)
    if "meta" not in _tables(db):
        db.execute(TABLES[2])
    return "2"


def _batches_with_ranges(db: sqlite3.Connection) -> None:
    """Batches that kept their body and end position: they start at their cursor."""
    old = db.execute(
        "SELECT b.webhook, b.webhook_id, COALESCE(c.position, b.end_position), b.end_position,"
        " b.body, b.type_counts, b.created, b.attempts"
        " FROM batches AS b LEFT JOIN cursors AS c ON c.webhook = b.webhook"
    ).fetchall()
    db.execute("DROP TABLE batches")
    db.execute(BATCHES)
    for webhook, webhook_id, start, end, body, counts, created, attempts in old:
        db.execute(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (webhook, webhook_id, start, end, _codes_of(counts), body, counts, created, attempts),
        )


# -- "2" -> "3": filters' views, vulnerabilities' line fields, batches' forms -------------


def _with_views_and_forms(db: sqlite3.Connection) -> str:
    segments = _columns(db, "segments")
    for column in ("views", "fields"):
        if column not in segments:
            db.execute(f"ALTER TABLE segments ADD COLUMN {column} TEXT")
    if "form" not in _columns(db, "batches"):
        db.execute("ALTER TABLE batches ADD COLUMN form TEXT")
    return "3"


MIGRATIONS: dict[str, Callable[[sqlite3.Connection], str]] = {
    "0": _from_rows_per_event,
    "1": _to_current_columns,
    "2": _with_views_and_forms,
}
