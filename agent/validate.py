"""``tailhook validate``: detection lines checked offline, a file at a time, streamed.

Each file (``-``: standard input) is read in chunks and split with the sources'
``LineSplitter``, one line at a time so that line numbers hold: no line is held past
``MAX_VALIDATE_LINE`` bytes (a longer one is ``line_too_long`` with its length). A file
that cannot be opened or read is an error of its own on stderr (``FILE: cannot be read:
why``), never an invalid line; the other files are still checked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

from agent.errors import RejectedLine
from agent.formats import EventFormat, MappingContext, load_format
from agent.pipeline import decode_line, is_blank
from agent.sources.lines import LineSplitter, LongLine

MAX_VALIDATE_LINE = 1024 * 1024
CHUNK_BYTES = 64 * 1024


def validate(files: list[str], format_name: str) -> int:
    """``tailhook validate``: 0 all valid, 1 some invalid, 2 a file could not be read
    (the others are still checked). Lines are read in chunks: none is held past
    ``MAX_VALIDATE_LINE`` bytes, however long it is."""
    fmt = load_format(format_name)
    ctx = MappingContext()
    total = invalid = unreadable = 0
    for name in files:
        try:
            checked, bad = _validate_file(name, fmt, ctx)
        except _Unreadable as exc:
            print(f"{name}: cannot be read: {exc}", file=sys.stderr)
            unreadable += 1
            checked, bad = exc.checked, exc.invalid
        total += checked
        invalid += bad
    summary = f"{total} lines, {total - invalid} valid, {invalid} invalid"
    if unreadable:
        summary += f"; {unreadable} of {len(files)} files could not be read"
    print(summary)
    return 2 if unreadable else 1 if invalid else 0


class _Unreadable(Exception):
    """A file (or standard input) that could not be read, and what was checked of it."""

    def __init__(self, reason: str, checked: int, invalid: int) -> None:
        super().__init__(reason)
        self.checked = checked
        self.invalid = invalid


def _validate_file(name: str, fmt: EventFormat, ctx: MappingContext) -> tuple[int, int]:
    """Check every line of one file (``-``: standard input); (lines, invalid)."""
    checked = invalid = 0
    try:
        with _open_input(name) as handle:
            for number, line in numbered_lines(handle, MAX_VALIDATE_LINE):
                if isinstance(line, LongLine):
                    reason: str | None = f"line_too_long: {line.length} bytes"
                elif is_blank(line):
                    continue
                else:
                    reason = _check_line(line.removesuffix(b"\r"), fmt, ctx)
                checked += 1
                if reason is not None:
                    invalid += 1
                    print(f"{name}:{number}: {reason}")
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc), checked, invalid) from exc
    return checked, invalid


def _open_input(name: str) -> BinaryIO:
    if name == "-":
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    return open(name, "rb")


def _check_line(line: bytes, fmt: EventFormat, ctx: MappingContext) -> str | None:
    try:
        obj = decode_line(line)
        fmt.convert(obj, ctx)
    except RejectedLine as rejected:
        return f"{rejected.reason}: {rejected.detail}"
    return None


def numbered_lines(handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | LongLine]]:
    """Each line of ``handle`` with its number (from 1): its bytes without the ``\\n``,
    or a ``LongLine`` (head and length) when longer than ``max_line_bytes``. A UTF-8
    byte-order mark at the start is skipped; a last line without ``\\n`` counts."""
    splitter = LineSplitter(max_line_bytes)
    number = 0
    while chunk := handle.read(CHUNK_BYTES):
        start = 0
        while start < len(chunk):
            # Fed up to one newline at a time, the splitter finishes at most one line
            # per call, so lines and over-long lines come out in their order.
            end = chunk.find(b"\n", start)
            stop = len(chunk) if end < 0 else end + 1
            lines, long_lines = splitter.feed(chunk[start:stop])
            start = stop
            finished: list[bytes | LongLine] = [*lines, *long_lines]
            for line in finished:
                number += 1
                yield number, line
    if splitter.pending:
        lines, long_lines = splitter.feed(b"\n")
        last: list[bytes | LongLine] = [*lines, *long_lines]
        for line in last:
            number += 1
            yield number, line
