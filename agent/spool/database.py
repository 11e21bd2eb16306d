"""The spool's SQLite database: opening it (migrating an older layout, setting a damaged
one aside), transactions, and the one place where its errors become ``StateError``.

Health. Any failed read or write, a checkpoint included, turns ``accepting`` off:
``/readyz`` answers 503 and new events are refused (sources pause and read them again
later), while deliveries go on being recorded and delivered events deleted. A failed
write first gives the headroom reserve back to the file system and checkpoints the WAL
into that room, then runs once more, so on a full disk a delivered batch is still
recorded as delivered. ``probe`` (the agent's gauge thread, every second) takes the
reserve again once there is room, proves a write works, and turns ``accepting`` back on.
If the spool itself filled the disk, its free pages are given back first (``VACUUM``,
once what it holds is small enough to copy in the room left).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.errors import StateError
from agent.spool.capacity import Budget, bytes_on_disk, pages_in_use, reserve_path
from agent.spool.layouts import SCHEMA_VERSION, UnknownLayout, prepare
from agent.spool.reserve import Reserve
from agent.telemetry import fields

log = logging.getLogger(__name__)

T = TypeVar("T")

#: SQLite's names for a file that is not, or no longer, a sound database.
DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
#: How long a statement waits for another connection's lock (``tailhook dead-letter
#: replay`` in another process) before it fails.
BUSY_TIMEOUT = 2.0
#: The most a VACUUM that gives a full disk's space back may copy (in memory).
MAX_VACUUM_BYTES = 64 * 1024 * 1024


def _connect(path: Path) -> sqlite3.Connection:
    # Owner-only, whatever the umask; SQLite gives its -wal and -shm files the same mode.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot create {path}: {exc.strerror}") from exc
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        # 16 KiB pages: segments are large blobs; measured, this cuts the CPU cost of
        # keeping and deleting them by about a third against the default 4 KiB.
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Deleted events are zeroed in the b-tree pages they leave, but freed overflow
        # pages are not written again: with SQLite's secure_delete on (as Debian builds
        # it) every deleted page was written to the WAL, so deleting cost as much WAL as
        # keeping. The file is 0600 in a 0700 directory.
        db.execute("PRAGMA secure_delete=FAST")
        db.execute("PRAGMA temp_store=MEMORY")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("PRAGMA quick_check found damage")
        db.execute("BEGIN IMMEDIATE")
        try:
            old = prepare(db)
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        if old not in (None, SCHEMA_VERSION):
            log.warning("The spool was migrated from an older layout", extra=fields(layout=old))
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
    except UnknownLayout as exc:
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


class Database:
    """The spool's connection, its budget and reserve, and whether it takes new events.
    Not thread-safe: the spool's lock is held around every call."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.conn, self.recovered = open_database(path)
        try:
            page_size = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
            self.budget = Budget.of(max_bytes, page_size)
            self.conn.execute(f"PRAGMA wal_autocheckpoint={self.budget.checkpoint_pages}")
            self.conn.execute(f"PRAGMA journal_size_limit={self.budget.wal_check_bytes}")
        except sqlite3.Error as exc:
            self.conn.close()
            raise StateError(f"cannot read the spool at {path}: {exc}") from exc
        self.reserve = Reserve(reserve_path(path), self.budget.reserve_bytes)
        #: False while the spool refuses new events (a failed read or write): see above.
        self.accepting = self.reserve.take()
        self.problem = "" if self.accepting else "no room in state_dir for the spool's reserve"
        self._warn_if_larger_than_the_disk()

    # -- reading and writing ------------------------------------------------------------

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return query(self.conn)
        except sqlite3.Error as exc:
            self._failed("read", exc)
            raise StateError(f"cannot read the spool: {exc}") from exc

    def write(self, change: Callable[[sqlite3.Connection], T], new_events: bool = False) -> T:
        """Run ``change`` in one transaction: all of it is committed, or none of it.

        ``new_events``: it keeps events read from a source, refused while the spool is
        not accepting. Any other change that fails is run once more, after the reserve
        has made room.
        """
        if new_events and not self.accepting:
            raise StateError(f"the spool takes no new events for now: {self.problem}")
        try:
            return self._commit(change)
        except sqlite3.Error as exc:
            self._failed("written", exc)
            if new_events:
                raise StateError(f"cannot write the spool: {exc}") from exc
        try:
            return self._commit(change)
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the spool: {exc}") from exc

    def _commit(self, change: Callable[[sqlite3.Connection], T]) -> T:
        db = self.conn
        db.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            result = change(db)
            db.execute("COMMIT")
            committed = True
        finally:
            if not committed and db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("Rolling back a failed spool write failed", exc_info=True)
        self._check_wal()
        return result

    def _check_wal(self) -> None:
        """A WAL past its size was not reset by its checkpoint (SQLite does not say when
        the one after a commit fails): checkpoint now, to hear why."""
        try:
            size = os.stat(self.path.with_name(self.path.name + "-wal")).st_size
        except FileNotFoundError:
            return
        if size > self.budget.wal_check_bytes:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                self._failed("checkpointed", exc)

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        if self.accepting:
            log.error(
                f"The spool could not be {what}; new events wait until it can (is"
                " state_dir full?), deliveries go on",
                extra=fields(spool=str(self.path), error=str(exc)),
            )
        self.accepting = False
        self.problem = str(exc)
        if self.reserve.held:
            self.reserve.release()
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                log.warning("Checkpointing the spool into its reserve failed", exc_info=True)

    # -- recovering ---------------------------------------------------------------------

    def probe(self) -> None:
        """While new events are refused: take the reserve back, and if a read and a
        write then work, take new events again."""
        if self.accepting:
            return
        if not self._room_to_spare():
            self._give_back_free_pages()
            if not self._room_to_spare():
                return
        if not self.reserve.take():
            return

        def touch(db: sqlite3.Connection) -> None:
            for table in ("segments", "checkpoints", "cursors", "batches"):
                db.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (str(time.time()),))

        try:
            self._commit(touch)
        except sqlite3.Error as exc:
            self._failed("written", exc)
            return
        if self.reserve.held:  # the checkpoint after it worked too
            self.accepting = True
            self.problem = ""
            log.warning("The spool can be written again; new events are taken")

    def _room_to_spare(self) -> bool:
        """Room for the reserve and a WAL's share besides: taking the reserve back the
        moment it was released, with the disk as full as before, would only fail the
        next write again."""
        if self.reserve.held:
            return True
        try:
            disk = os.statvfs(self.path.parent)
        except OSError:
            return False
        return disk.f_bavail * disk.f_frsize >= self.reserve.size + self.budget.wal_bytes

    def _give_back_free_pages(self) -> None:
        """``VACUUM``: when the spool itself filled the disk and has since been
        delivered, its file still holds the space; copy what is left into a smaller one."""
        try:
            total, used = pages_in_use(self.conn)
            size = self.budget.page_size
            if (total - used) * size < self.reserve.size or used * size > MAX_VACUUM_BYTES:
                return
            disk = os.statvfs(self.path.parent)
            room = disk.f_bavail * disk.f_frsize
            copy = (used + 2) * (size + 24)  # written to the WAL, then the file shrinks
            if copy > room or bytes_on_disk(self.path) + copy > self.budget.max_bytes:
                return
            self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except (sqlite3.Error, OSError) as exc:
            log.warning("Giving the spool's free pages back failed", extra=fields(error=str(exc)))
            return
        log.warning(
            "The spool gave its free pages back to the file system",
            extra=fields(pages_before=total, pages_now=used),
        )

    def close(self) -> None:
        self.conn.close()
        self.reserve.close()

    def _warn_if_larger_than_the_disk(self) -> None:
        try:
            disk = os.statvfs(self.path.parent)
        except OSError:
            return
        if disk.f_blocks * disk.f_frsize < self.budget.max_bytes:
            log.warning(
                "spool.max_bytes is larger than the file system state_dir is on; when it"
                " is full, new events wait until events are delivered",
                extra=fields(max_bytes=self.budget.max_bytes),
            )
