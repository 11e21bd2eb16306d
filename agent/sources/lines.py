"""Splitting a byte stream into complete lines, never holding an over-long line whole.

``LineSplitter`` is fed chunks and returns the complete lines they finish. A line longer
than ``max_line_bytes`` is not kept: only its first KiB and its length are, and it is
reported once its newline arrives. ``pending`` is how many bytes belong to the line
not yet complete, so a reader can checkpoint at the start of that line.
"""

from __future__ import annotations

from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 1024


@dataclass(frozen=True)
class LongLine:
    head: bytes
    length: int


class LineSplitter:
    def __init__(self, max_line_bytes: int, skip_bom: bool = True) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = b""
        self._skipping: int | None = None  # bytes of an over-long line seen so far
        self._head = b""
        self._at_start = skip_bom

    @property
    def pending(self) -> int:
        """Bytes fed that belong to the incomplete last line."""
        return self._skipping if self._skipping is not None else len(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], list[LongLine]]:
        """Complete lines (without ``\\n``) and the over-long lines finished by ``data``."""
        if self._at_start:
            joined = self._buf + data
            if len(joined) < len(BOM) and BOM.startswith(joined):
                self._buf = joined
                return [], []
            self._at_start = False
            self._buf = b""
            data = joined[len(BOM) :] if joined.startswith(BOM) else joined
        long_lines: list[LongLine] = []
        if self._skipping is not None:
            end = data.find(b"\n")
            if end < 0:
                self._skipping += len(data)
                return [], long_lines
            long_lines.append(LongLine(self._head, self._skipping + end))
            self._skipping = None
            data = data[end + 1 :]
        lines = data.split(b"\n")
        if self._buf:  # the line begun by earlier data: joined alone, not the whole chunk
            lines[0] = self._buf + lines[0]
        tail = lines.pop()
        limit = self.max_line_bytes
        if lines and max(map(len, lines)) > limit and any(_too_long(x, limit) for x in lines):
            kept = []
            for line in lines:
                if _too_long(line, limit):
                    long_lines.append(LongLine(line[:HEAD_BYTES], len(line)))
                else:
                    kept.append(line)
            lines = kept
        if len(tail) > limit + 1:  # + 1: it may yet end in "\r\n"
            self._skipping = len(tail)
            self._head = tail[:HEAD_BYTES]
            self._buf = b""
        else:
            self._buf = tail
        return lines, long_lines

    def reset(self) -> None:
        """Forget the incomplete line (the file was truncated or the peer went away)."""
        self._buf = b""
        self._skipping = None
        self._head = b""


def _too_long(line: bytes, limit: int) -> bool:
    """Longer than ``limit``, not counting the ``\r`` of a CRLF ending."""
    return len(line) - line.endswith(b"\r") > limit
