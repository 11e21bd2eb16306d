"""Spools written by older tailhooks: each is migrated, and what it held is delivered.

Each builder writes a spool the way that version did: its DDL, copied from the commit
that used it, and rows in its encoding.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agent.spool import Checkpoint, Spool
from agent.telemetry import Metrics
from tests.agent_support import file_config, received_ids, running_agent
from tests.support.receiver import Receiver

CHECKPOINTS = """CREATE TABLE checkpoints (
    source TEXT NOT NULL, key TEXT NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL,
    fingerprint BLOB NOT NULL, updated REAL NOT NULL, PRIMARY KEY (source, key))"""

# 6408101 "Core: SQLite spool ...": a row per event.
ROWS_PER_EVENT = [
    """CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
    body BLOB NOT NULL, created REAL NOT NULL)""",
    CHECKPOINTS,
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    """CREATE TABLE batches (webhook TEXT PRIMARY KEY, webhook_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL, body BLOB NOT NULL, type_counts TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL)""",
]
# 5b7fdfc "Spool in segments": no starts, no target; a batch keeps its body.
SEGMENTS_FIRST = [
    """CREATE TABLE segments (seq INTEGER PRIMARY KEY AUTOINCREMENT, count INTEGER NOT NULL,
    types TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL)""",
    CHECKPOINTS,
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    """CREATE TABLE batches (webhook TEXT PRIMARY KEY, webhook_id TEXT NOT NULL,
    end_position INTEGER NOT NULL, body BLOB NOT NULL, type_counts TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL)""",
]
RANGE_BATCHES = """CREATE TABLE batches (webhook TEXT PRIMARY KEY, webhook_id TEXT NOT NULL,
    start_position INTEGER NOT NULL, end_position INTEGER NOT NULL, codes TEXT NOT NULL,
    body BLOB, type_counts TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL)"""
# 8edef6a "dead-letter replay": target; batches rebuilt from a position range.
SEGMENTS_WITH_TARGET = [
    """CREATE TABLE segments (seq INTEGER PRIMARY KEY AUTOINCREMENT, count INTEGER NOT NULL,
    types TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, target TEXT)""",
    CHECKPOINTS,
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    RANGE_BATCHES,
]
# 20305d7 "... stored event offsets": starts in the machine's order; meta, no schema row.
SEGMENTS_WITH_STARTS = [
    """CREATE TABLE segments (seq INTEGER PRIMARY KEY AUTOINCREMENT, count INTEGER NOT NULL,
    types TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, starts BLOB NOT NULL,
    target TEXT)""",
    CHECKPOINTS,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    RANGE_BATCHES,
]

# 9153520 (layout "2"): starts little-endian, the meta schema row; no views, fields, form.
LAYOUT_2 = [
    """CREATE TABLE segments (seq INTEGER PRIMARY KEY AUTOINCREMENT, count INTEGER NOT NULL,
    types TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, starts BLOB NOT NULL,
    target TEXT)""",
    CHECKPOINTS,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE cursors (webhook TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    RANGE_BATCHES,
]

EVENTS = [orjson.dumps({"object_type": "hit", "id": [f"hit-{n}"]}) for n in range(7)]
CHECKPOINT = Checkpoint("8:123", "/var/log/waf.log", 4096, b"{")
WEBHOOK_ID = "msg_0123456789abcdef0123456789abcdef"
IN_FLIGHT = b"[" + EVENTS[2] + b"," + EVENTS[3] + b"]"  # a's batch: events 2 and 3


def position(seq: int, index: int) -> int:
    return seq << 24 | index


def create(path: Path, ddl: list[str]) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in ddl:
        db.execute(statement)
    db.execute(
        "INSERT INTO checkpoints VALUES ('waf', ?, ?, ?, ?, 1.0)",
        (CHECKPOINT.key, CHECKPOINT.path, CHECKPOINT.offset, CHECKPOINT.fingerprint),
    )
    return db


def rows_per_event(path: Path) -> None:
    db = create(path, ROWS_PER_EVENT)
    db.executemany(
        "INSERT INTO events (type, body, created) VALUES ('hit', ?, 1.0)",
        [(event,) for event in EVENTS],
    )
    db.execute("DELETE FROM events WHERE seq <= 1")  # delivered and collected
    db.execute("INSERT INTO cursors VALUES ('a', 2), ('b', 1)")  # a delivered events 0, 1
    db.execute(
        "INSERT INTO batches VALUES ('a', ?, 4, ?, 'hit=2', 2.0, 3)", (WEBHOOK_ID, IN_FLIGHT)
    )
    db.commit()
    db.close()


def segment_rows(db: sqlite3.Connection, starts: bool, target: bool) -> None:
    """Events 1-3 and 4-6 in two segments (event 0's segment was collected)."""
    for seq, events in ((2, EVENTS[1:4]), (3, EVENTS[4:])):
        columns = {"seq": seq, "count": 3, "types": "hhh", "body": b"\n".join(events)}
        columns["created"] = 1.0
        if starts:
            offsets = array("I", [0])
            for event in events[:-1]:
                offsets.append(offsets[-1] + len(event) + 1)
            columns["starts"] = offsets.tobytes()  # the machine's byte order
        if target:
            columns["target"] = None
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        db.execute(f"INSERT INTO segments ({names}) VALUES ({marks})", list(columns.values()))
    db.execute("INSERT INTO cursors VALUES (?, ?)", ("a", position(2, 1)))
    db.execute("INSERT INTO cursors VALUES (?, ?)", ("b", position(2, 0)))


def segments_first(path: Path) -> None:
    db = create(path, SEGMENTS_FIRST)
    segment_rows(db, starts=False, target=False)
    db.execute(
        "INSERT INTO batches VALUES ('a', ?, ?, ?, 'hit=2', 2.0, 3)",
        (WEBHOOK_ID, position(3, 0), IN_FLIGHT),
    )
    db.commit()
    db.close()


def range_batch(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO batches VALUES ('a', ?, ?, ?, 'h', NULL, 'hit=2', 2.0, 3)",
        (WEBHOOK_ID, position(2, 1), position(3, 0)),
    )


def segments_with_target(path: Path) -> None:
    db = create(path, SEGMENTS_WITH_TARGET)
    segment_rows(db, starts=False, target=True)
    range_batch(db)
    db.commit()
    db.close()


def segments_with_starts(path: Path) -> None:
    db = create(path, SEGMENTS_WITH_STARTS)
    segment_rows(db, starts=True, target=True)
    range_batch(db)
    db.execute("INSERT INTO meta VALUES ('probe', '1.0')")
    db.commit()
    db.close()


def layout_2(path: Path) -> None:
    db = create(path, LAYOUT_2)
    segment_rows(db, starts=True, target=True)
    if sys.byteorder == "big":  # layout "2" kept them little-endian
        db.execute("UPDATE segments SET starts = x''")
    range_batch(db)
    db.execute("INSERT INTO meta VALUES ('schema', '2')")
    db.commit()
    db.close()


LAYOUTS: list[Callable[[Path], None]] = [
    rows_per_event,
    segments_first,
    segments_with_target,
    segments_with_starts,
    layout_2,
]


@pytest.mark.parametrize("build", LAYOUTS, ids=[build.__name__ for build in LAYOUTS])
def test_an_older_spool_is_migrated_and_what_it_held_is_delivered(
    tmp_path: Path, build: Callable[[Path], None]
) -> None:
    build(tmp_path / "spool.db")
    spool = Spool(tmp_path / "spool.db", Metrics(CollectorRegistry()))
    assert not spool.recovered
    assert not list(tmp_path.glob("*.damaged-*"))
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    assert spool.checkpoints("waf") == {CHECKPOINT.key: CHECKPOINT}
    assert (spool.backlog("a"), spool.backlog("b")) == (5, 6)
    batch = spool.open_batch("a")
    assert batch is not None
    assert (batch.webhook_id, batch.body, batch.attempts) == (WEBHOOK_ID, IN_FLIGHT, 3)
    spool.finish_batch("a", batch)
    assert spool.backlog("a") == 3
    for webhook, first in (("a", 4), ("b", 1)):
        formed = spool.next_batch(webhook, 100, 1 << 20)
        assert formed is not None
        assert formed.body == b"[" + b",".join(EVENTS[first:]) + b"]"
        spool.finish_batch(webhook, formed)
    assert spool.held_bytes == 0
    spool.close()
    again = Spool(tmp_path / "spool.db", Metrics(CollectorRegistry()))
    again.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    assert (again.backlog("a"), again.backlog("b"), again.recovered) == (0, 0, False)


def test_a_spool_of_rows_per_event_crossing_segments_keeps_every_position(
    tmp_path: Path,
) -> None:
    db = create(tmp_path / "spool.db", ROWS_PER_EVENT)
    bodies = [b"%d" % n for n in range(2500)]
    db.executemany(
        "INSERT INTO events (type, body, created) VALUES ('hit', ?, 1.0)",
        [(body,) for body in bodies],
    )
    db.execute("INSERT INTO cursors VALUES ('a', 1500), ('b', 2500)")
    db.commit()
    db.close()
    spool = Spool(tmp_path / "spool.db", Metrics(CollectorRegistry()))
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    assert (spool.backlog("a"), spool.backlog("b")) == (1000, 0)
    batch = spool.next_batch("a", 5000, 1 << 30)
    assert batch is not None and batch.body == b"[" + b",".join(bodies[1500:]) + b"]"


def test_an_agent_delivers_a_spool_an_older_tailhook_left(
    tmp_path: Path, receiver: Receiver
) -> None:
    base = file_config(tmp_path, receiver.url, (str(tmp_path / "none-*.log"),))
    config = replace(base, webhooks=(replace(base.webhooks[0], name="a"),))
    config.state_dir.mkdir(mode=0o700)
    rows_per_event(config.state_dir / "spool.db")
    with running_agent(config):
        assert receiver.wait_for(lambda requests: len(requests) >= 2, 10)
    first, second = receiver.requests[:2]
    assert (first.headers["webhook-id"], first.body) == (WEBHOOK_ID, IN_FLIGHT)
    assert received_ids([second.json()]) == [f"hit-{n}" for n in range(4, 7)]
