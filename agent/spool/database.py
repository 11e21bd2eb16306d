"""The spool's SQLite database: its schema, opening (and replacing a damaged one), and
transactions that turn SQLite errors into ``StateError``."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import StateError
from agent.telemetry import fields

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    count INTEGER NOT NULL,
    types TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    starts BLOB NOT NULL,  -- where each event begins in body (32-bit unsigned, native order)
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


class Transaction:
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


#: The layout of the tables; a spool written with another layout is set aside.
SCHEMA_VERSION = "2"


class _Incompatible(sqlite3.DatabaseError):
    """The spool was written by a tailhook with another layout."""


def _check_version(db: sqlite3.Connection) -> None:
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is not None:
        if row[0] != SCHEMA_VERSION:
            raise _Incompatible(f"spool layout {row[0]}, this tailhook uses {SCHEMA_VERSION}")
        return
    columns = {info[1] for info in db.execute("PRAGMA table_info(segments)")}
    used = db.execute("SELECT EXISTS (SELECT 1 FROM cursors)").fetchone()[0]
    if "starts" not in columns or used:
        raise _Incompatible("a spool from before layouts were versioned")
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))


def _connect(path: Path) -> sqlite3.Connection:
    # Owner-only, whatever the umask; SQLite gives its -wal and -shm files the same mode.
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot create {path}: {exc.strerror}") from exc
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        # 16 KiB pages: segments are large blobs; measured, this cuts the CPU cost of
        # keeping and deleting them by about a third against the default 4 KiB.
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        # Checkpoint the WAL into the database every 4 MiB (256 pages of 16 KiB) and
        # truncate it back to that size, so it does not grow to 16 MiB between them.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute("PRAGMA journal_size_limit=4194304")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("PRAGMA quick_check found damage")
        db.executescript(SCHEMA)
        _check_version(db)
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_database(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (or create) the spool database; a damaged one is moved aside and replaced.

    Returns the connection and whether a damaged database was replaced. Anything else
    (permissions, a full disk) is a StateError: starting without the spool could only
    lose data.
    """
    try:
        return _connect(path), False
    except _Incompatible as exc:
        damaged: sqlite3.DatabaseError = exc
        what = "was written by another version of tailhook"
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name not in DAMAGED and "quick_check" not in str(exc):
            raise StateError(f"cannot open the spool at {path}: {exc}") from exc
        damaged = exc
        what = "was damaged"
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the spool at {path}: {exc}") from exc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    log.error(
        f"The spool {what} and has been replaced by an empty one; events it held and"
        " not yet delivered are lost, and files are read again from their start",
        extra=fields(spool=str(path), kept_as=str(aside), error=str(damaged)),
    )
    try:
        return _connect(path), True
    except sqlite3.Error as exc:
        raise StateError(f"cannot create a new spool at {path}: {exc}") from exc
