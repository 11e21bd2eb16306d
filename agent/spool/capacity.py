"""Capacity: how ``spool.max_bytes`` is shared out on disk, and what fits.

``max_bytes`` bounds everything the spool keeps in ``state_dir``: ``spool.db``, its WAL
(``-wal``), the WAL index (``-shm``) and the headroom reserve (``spool.reserve``). The
budget gives each its share, from ``max_bytes`` and the database's page size:

- the WAL is checkpointed every ``checkpoint_pages`` pages (1/64 of ``max_bytes``, 4 to
  256 pages), and one transaction writes at most ``transaction_pages`` pages (a source
  reads ``read_bytes`` per commit, 1/256 of ``max_bytes``, 16 KiB to 1 MiB, so that one
  commit fits the WAL's share). The WAL's share is what those allow, plus one more
  transaction: a checkpoint that fails silently (a full disk) is noticed before the WAL
  passes its share (see ``database``);
- the reserve is as large as the WAL's share: released when a write fails, it covers both
  what a checkpoint adds to ``spool.db`` (at most the pages in the WAL) and what the WAL
  may still need to grow (at most the rest of its share), so deliveries can always be
  recorded and delivered events deleted on a full disk;
- ``spool.db`` gets the rest, in pages. SQLite reuses free pages before it grows the
  file, so an append fits while the pages in use, plus the pages it adds, stay within
  that share; the file then never outgrows it.

``tailhook_spool_bytes`` still counts the bytes of the events held; the gauge
``tailhook_spool_capacity_ratio`` is the files' real size over ``max_bytes``.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from agent.spool.cursors import PINNED, Change, Ledger
from agent.spool.segments import position

KIB = 1024
MIB = 1024 * KIB
#: The smallest ``spool.max_bytes``: below it, WAL and reserve leave no room for events.
MIN_MAX_BYTES = 2 * MIB
#: A source's read per commit: 1/256 of ``max_bytes``, within these bounds.
MIN_READ_BYTES = 16 * KIB
MAX_READ_BYTES = 1 * MIB
#: WAL frames are a page plus a 24-byte header; the WAL file has a 32-byte header.
FRAME_HEADER = 24
WAL_HEADER = 32
#: The WAL index grows by 32 KiB for every 4096 frames (the first block holds 4062).
SHM_BLOCK = 32 * KIB
SHM_FRAMES = 4062
#: B-tree pages a transaction writes besides a segment's overflow pages: leaf and interior
#: pages of ``segments`` (a split included), ``sqlite_sequence``, the checkpoint's row and
#: index, page 1, freelist trunks of what a drop or a collection frees.
BOOKKEEPING_PAGES = 16
#: File systems allocate whole blocks: each of the four files may take up to 4 KiB more
#: than its size.
ROUNDING = 4 * 4 * KIB
#: A read's events, as the spool keeps them, are at most this many times the bytes read
#: (measured: native hits 1.24, system and scope events up to 1.45; ModSecurity 0.23),
#: counting the part of a line carried over from the read before.
EXPANSION = 2


def read_bytes(max_bytes: int) -> int:
    """Bytes a source reads before it commits them in one segment."""
    return max(MIN_READ_BYTES, min(MAX_READ_BYTES, max_bytes // 256))


def overflow_pages(size: int, page_size: int) -> int:
    """Pages a record of ``size`` bytes takes (an overflow page holds ``page_size - 4``)."""
    return -(-size // (page_size - 4))


@dataclass(frozen=True)
class Budget:
    """How ``max_bytes`` is shared out between the spool's files."""

    max_bytes: int
    page_size: int
    read_bytes: int
    checkpoint_pages: int  # PRAGMA wal_autocheckpoint
    transaction_pages: int  # the most one commit-sized transaction writes
    wal_bytes: int  # the WAL's share
    shm_bytes: int
    reserve_bytes: int
    database_pages: int  # the most pages spool.db may hold

    @classmethod
    def of(cls, max_bytes: int, page_size: int) -> Budget:
        frame = page_size + FRAME_HEADER
        reads = read_bytes(max_bytes)
        checkpoint = max(4, min(256, max_bytes // 64 // page_size))
        transaction = overflow_pages(EXPANSION * reads, page_size) + BOOKKEEPING_PAGES
        frames = checkpoint - 1 + 2 * transaction
        wal = WAL_HEADER + frames * frame
        shm = SHM_BLOCK * (1 + frames // SHM_FRAMES)
        reserve = -(-wal // (64 * KIB)) * 64 * KIB
        database = (max_bytes - wal - shm - reserve - ROUNDING) // page_size
        return cls(
            max_bytes, page_size, reads, checkpoint, transaction, wal, shm, reserve, database
        )

    @property
    def wal_check_bytes(self) -> int:
        """A WAL larger than this was not reset by its checkpoint: one is run at once,
        so a failing one is noticed (also ``PRAGMA journal_size_limit``)."""
        frames = self.checkpoint_pages - 1 + self.transaction_pages
        return WAL_HEADER + frames * (self.page_size + FRAME_HEADER)

    def pages_added(self, record_bytes: int) -> int:
        """At most the pages ``spool.db`` grows by to keep a record of this size: its
        overflow pages and a leaf split reaching the root."""
        return overflow_pages(record_bytes, self.page_size) + 3

    def room_needed(self, record_bytes: int) -> int:
        """Pages that must be free in ``spool.db``'s share to keep a record. A record
        too large for one commit-sized transaction also borrows, from that share, what
        its transaction writes to the WAL beyond the WAL's share, twice (the WAL, then
        the checkpoint that copies it)."""
        pages = overflow_pages(record_bytes, self.page_size)
        excess = max(0, pages + BOOKKEEPING_PAGES - self.transaction_pages)
        return self.pages_added(record_bytes) + 2 * excess


def pages_in_use(db: sqlite3.Connection) -> tuple[int, int]:
    """``spool.db``'s pages, and how many of them hold something (not on the freelist)."""
    total = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return total, total - free


def spool_files(path: Path) -> list[Path]:
    """The files the spool keeps on disk, the reserve included."""
    return [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")] + [
        reserve_path(path)
    ]


def reserve_path(path: Path) -> Path:
    return path.with_name(path.stem + ".reserve")


def bytes_on_disk(path: Path) -> int:
    """What the spool's files take: each file's size or its allocated blocks, whichever
    is larger."""
    total = 0
    for file in spool_files(path):
        try:
            info = os.stat(file)
        except FileNotFoundError:
            continue
        total += max(info.st_size, info.st_blocks * 512)
    return total


def has_room(db: sqlite3.Connection, budget: Budget, need: int) -> bool:
    """``need`` more pages fit in ``spool.db``'s share (free pages are used first)."""
    _, used = pages_in_use(db)
    return used + need <= budget.database_pages


def drop_oldest(db: sqlite3.Connection, ledger: Ledger, budget: Budget, need: int) -> Change:
    """Delete the oldest segments until ``need`` more pages fit (or nothing more can
    go), and move every cursor past them; inside the caller's transaction.

    An event is dropped when a webhook that was still to deliver it (of its types, and
    not excluded by its filter) loses it; each is counted once. Events of a webhook's
    batch in flight are not dropped: that batch is still delivered, rebuilt from its
    segments, which stay until it is finished.
    """
    change = Change()
    ranges = {
        name: (start, end)
        for name, start, end in db.execute(
            "SELECT webhook, start_position, end_position FROM batches"
        )
    }
    last = 0
    while not has_room(db, budget, need):
        row = db.execute(
            f"SELECT seq, types, target, LENGTH(body), {PINNED}, views FROM segments"
            " WHERE seq > ? ORDER BY seq LIMIT 1",
            (last,),
        ).fetchone()
        if row is None:
            break
        last, types, target, length, pinned, views = row
        seen = orjson.loads(views) if views else {}  # filtered webhooks' views
        lost = bytearray(len(types))
        for name, codes in ledger.codes.items():
            if target not in (None, name):
                continue
            first = max(0, ledger.cursors[name] - position(last, 0))
            start, end = ranges.get(name, (0, 0))
            view = seen.get(name, types)
            n = 0
            for index in range(first, len(types)):
                if view[index] in codes and not start <= position(last, index) < end:
                    lost[index] = 1
                    n += 1
            if n:
                change.add_backlog(name, -n)
        change.dropped += sum(lost)
        if not pinned:
            db.execute("DELETE FROM segments WHERE seq = ?", (last,))
            change.deleted.append(last)
            change.held_bytes -= length
    after = position(last + 1, 0)
    for name, cursor in ledger.cursors.items():
        if last and cursor < after:
            db.execute("UPDATE cursors SET position = ? WHERE webhook = ?", (after, name))
            change.cursors[name] = after
    return change
