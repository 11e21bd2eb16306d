"""``tailhook validate``: detection lines checked offline, a file at a time, streamed.

Each file (``-``: standard input) is read in chunks and split with the sources'
``LineSplitter``, one line at a time so that line numbers hold: no line is held past
``MAX_VALIDATE_LINE`` bytes (a longer one is ``line_too_long`` with its length). A file
that cannot be opened or read is an error of its own on stderr (``FILE: cannot be read:
why``), never an invalid line; the other files are still checked.

Where things go: the reports (``FILE:LINE: reason``) and the summary go to stdout, or
with ``--print`` to stderr, because then stdout carries the notification objects alone,
one JSON object a line, for a pipe into ``jq``. A valid line that maps to nothing (a
ModSecurity transaction without rule messages) prints nothing. A hint is on stderr: a
file checked as ``native`` whose every line is ``unknown_event`` and shaped like a
ModSecurity audit log entry (a ``transaction`` object) gets
``FILE: hint: these look like ModSecurity audit log lines; try --format modsecurity``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from agent.errors import RejectedLine
from agent.formats import EventFormat, MappingContext, load_format
from agent.jsonlines import json_line
from agent.pipeline import decode_line, is_blank
from agent.sources.lines import LineSplitter, LongLine

MAX_VALIDATE_LINE = 1024 * 1024
CHUNK_BYTES = 64 * 1024
MODSECURITY_HINT = "hint: these look like ModSecurity audit log lines; try --format modsecurity"


@dataclass(frozen=True)
class Output:
    """Where a run writes: ``reports`` (invalid lines, the summary), ``notes`` (unreadable
    files, hints) and, for ``--print``, ``notifications`` (None: not printed)."""

    reports: TextIO
    notes: TextIO
    notifications: BinaryIO | None

    @classmethod
    def for_run(cls, print_notifications: bool) -> Output:
        if print_notifications:
            return cls(sys.stderr, sys.stderr, sys.stdout.buffer)
        return cls(sys.stdout, sys.stderr, None)


@dataclass
class Count:
    """What was checked of one file: lines (blank ones not counted), invalid lines, and
    the invalid ones that were ``unknown_event`` and shaped like a ModSecurity entry."""

    checked: int = 0
    invalid: int = 0
    modsecurity_shaped: int = 0

    def all_modsecurity_shaped(self) -> bool:
        return self.checked > 0 and self.modsecurity_shaped == self.checked


@dataclass(frozen=True)
class Checked:
    """One line's verdict: why it is invalid (None: valid), its notification (None:
    invalid, or valid and nothing to send), and whether it looks like ModSecurity's."""

    reason: str | None = None
    notification: dict[str, Any] | None = None
    modsecurity_shaped: bool = False


def validate(files: list[str], format_name: str, print_notifications: bool = False) -> int:
    """``tailhook validate``: 0 all valid, 1 some invalid, 2 a file could not be read
    (the others are still checked). Lines are read in chunks: none is held past
    ``MAX_VALIDATE_LINE`` bytes, however long it is."""
    fmt = load_format(format_name)
    ctx = MappingContext()
    out = Output.for_run(print_notifications)
    total = invalid = unreadable = 0
    for name in files:
        try:
            count = _validate_file(name, fmt, ctx, out)
        except _Unreadable as exc:
            print(f"{name}: cannot be read: {exc}", file=out.notes)
            unreadable += 1
            count = exc.count
        else:
            if format_name == "native" and count.all_modsecurity_shaped():
                print(f"{name}: {MODSECURITY_HINT}", file=out.notes)
        total += count.checked
        invalid += count.invalid
    if out.notifications is not None:
        out.notifications.flush()
    summary = f"{total} lines, {total - invalid} valid, {invalid} invalid"
    if unreadable:
        summary += f"; {unreadable} of {len(files)} files could not be read"
    print(summary, file=out.reports)
    return 2 if unreadable else 1 if invalid else 0


class _Unreadable(Exception):
    """A file (or standard input) that could not be read, and what was checked of it."""

    def __init__(self, reason: str, count: Count) -> None:
        super().__init__(reason)
        self.count = count


def _validate_file(name: str, fmt: EventFormat, ctx: MappingContext, out: Output) -> Count:
    """Check every line of one file (``-``: standard input). Only an error in opening or
    reading it is ``_Unreadable``; one in writing the output (a closed pipe) is not."""
    count = Count()
    try:
        handle = _open_input(name)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc), count) from exc
    with handle:
        lines = numbered_lines(handle, MAX_VALIDATE_LINE)
        while True:
            try:
                item = next(lines, None)
            except OSError as exc:
                raise _Unreadable(exc.strerror or str(exc), count) from exc
            if item is None:
                return count
            number, line = item
            if isinstance(line, LongLine):
                checked = Checked(f"line_too_long: {line.length} bytes")
            elif is_blank(line):
                continue
            else:
                checked = check_line(line.removesuffix(b"\r"), fmt, ctx)
            count.checked += 1
            if checked.reason is not None:
                count.invalid += 1
                count.modsecurity_shaped += checked.modsecurity_shaped
                print(f"{name}:{number}: {checked.reason}", file=out.reports)
            elif out.notifications is not None and checked.notification is not None:
                out.notifications.write(json_line(checked.notification))


def _open_input(name: str) -> BinaryIO:
    if name == "-":
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    return open(name, "rb")


def check_line(line: bytes, fmt: EventFormat, ctx: MappingContext) -> Checked:
    """Decode, validate and map one line, as the agent would."""
    try:
        obj = decode_line(line)
    except RejectedLine as rejected:
        return Checked(f"{rejected.reason}: {rejected.detail}")
    try:
        _, notification = fmt.convert(obj, ctx)
    except RejectedLine as rejected:
        shaped = rejected.reason == "unknown_event" and looks_like_modsecurity(obj)
        return Checked(f"{rejected.reason}: {rejected.detail}", modsecurity_shaped=shaped)
    return Checked(notification=notification)


def looks_like_modsecurity(obj: Any) -> bool:
    """A JSON audit log entry of ModSecurity 2 or 3 (or Coraza): a ``transaction`` object."""
    return isinstance(obj, dict) and isinstance(obj.get("transaction"), dict)


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
