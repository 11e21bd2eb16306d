"""Segments: how the spool encodes events, positions and batches.

A segment is the events of one source read: their serialised notifications joined by
newlines (orjson never writes a raw newline), one type letter per event, and where each
event starts. A position is ``segment << INDEX_BITS | index``.
"""

from __future__ import annotations

import sys
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: One letter per event type in a segment's ``types``.
TYPE_CODES = {"hit": "h", "vulnerability": "v", "system": "s", "scope": "c"}
CODE_TYPES = {code: kind for kind, code in TYPE_CODES.items()}
#: A position is ``segment << INDEX_BITS | index``.
INDEX_BITS = 24
INDEX_MASK = (1 << INDEX_BITS) - 1
#: Segments split into events, kept for the next batch (of any webhook).
CACHED_SEGMENTS = 8
#: Event start offsets are stored as 32-bit unsigned little-endian integers.
START_TYPECODE = "I"
BIG_ENDIAN = sys.byteorder == "big"


def offsets_to_bytes(offsets: array[int]) -> bytes:
    if BIG_ENDIAN:
        offsets = array(START_TYPECODE, offsets)
        offsets.byteswap()
    return offsets.tobytes()


def offsets_from_bytes(data: bytes) -> array[int]:
    offsets = array(START_TYPECODE)
    offsets.frombytes(data)
    if BIG_ENDIAN:
        offsets.byteswap()
    return offsets


def event_starts(body: bytes) -> array[int]:
    """Where each event of a segment's body begins (events are joined by newlines)."""
    starts = array(START_TYPECODE, [0])
    find, at = body.find, body.find(b"\n")
    while at >= 0:
        starts.append(at + 1)
        at = find(b"\n", at + 1)
    return starts


def new_webhook_id() -> str:
    """A Standard Webhooks message id for a new batch."""
    return "msg_" + uuid.uuid4().hex


def position(seq: int, index: int) -> int:
    return seq << INDEX_BITS | index


class NewSegment:
    """The events of one read, encoded as the spool keeps them, built one event at a time.

    Each serialised notification is copied into one buffer as it is made, rather than
    kept as its own bytes object: with thousands of objects alive at once, every new
    one costs the allocator fresh memory (measured: ~4 µs per event more).
    """

    __slots__ = ("body", "codes", "starts")

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.body = bytearray()
        self.starts = array(START_TYPECODE)  # where each event begins in ``body``

    def add(self, event_type: str, notification: bytes) -> None:
        """Append one event (the pipeline's hot path inlines the same three steps)."""
        self.starts.append(len(self.body))
        self.body += notification + b"\n"
        self.codes.append(TYPE_CODES[event_type])

    @classmethod
    def of(cls, events: Iterable[tuple[str, bytes]]) -> NewSegment:
        segment = cls()
        for event_type, notification in events:
            segment.add(event_type, notification)
        return segment

    def __len__(self) -> int:
        return len(self.codes)

    def keeping(self, wanted: str) -> tuple[str, bytes, bytes]:
        """Type letters, body and event starts (as stored) of the events whose type
        letter is in ``wanted``."""
        types = "".join(self.codes)
        body = bytes(self.body[:-1])  # each event ends with a newline; the last one's goes
        if all(code in wanted for code in set(types)):
            return types, body, offsets_to_bytes(self.starts)
        kept = NewSegment()
        for code, event in zip(types, body.split(b"\n"), strict=True):
            if code in wanted:
                kept.add(CODE_TYPES[code], event)
        return "".join(kept.codes), bytes(kept.body[:-1]), offsets_to_bytes(kept.starts)


@dataclass(frozen=True)
class Checkpoint:
    """How far one file has been read: complete lines up to ``offset``."""

    key: str  # the file's identity, "DEV:INODE"
    path: str  # where it was last seen, for people reading the state
    offset: int
    fingerprint: bytes  # the file's first bytes, to tell a reused inode from the same file


@dataclass(frozen=True)
class Batch:
    """One request's worth of events for one webhook, fixed once recorded."""

    webhook_id: str
    start_position: int
    end_position: int  # the webhook's cursor once this batch is finished
    codes: str  # the type letters it took
    body: bytes
    type_counts: Mapping[str, int]
    created: float
    attempts: int

    @property
    def count(self) -> int:
        return sum(self.type_counts.values())


@dataclass(frozen=True)
class StoredSegment:
    """A stored segment, with where each event starts in its body."""

    types: str
    body: bytes
    starts: list[int]  # starts[i] is event i's first byte; starts[count] is len(body) + 1
    created: float
    target: str | None

    @property
    def count(self) -> int:
        return len(self.types)

    @classmethod
    def load(
        cls, types: str, body: bytes, starts: bytes, created: float, target: str | None
    ) -> StoredSegment:
        # A segment migrated from an older layout may not have its starts stored.
        offsets = offsets_from_bytes(starts) if starts or not types else event_starts(body)
        offsets.append(len(body) + 1)
        return cls(types, body, offsets.tolist(), created, target)

    def take(
        self, index: int, stop: int, codes: str, max_events: int, budget: int, first: bool
    ) -> tuple[list[bytes], int]:
        """Events in ``[index, stop)`` of the types in ``codes``, at most ``max_events``
        of them and ``budget`` bytes (each counted with one separator); with ``first``
        (nothing taken yet for the batch) the first event fits whatever its size.
        Returns their bytes (runs of adjacent events joined by ",") and the index after
        the last event looked at."""
        starts, body, types = self.starts, self.body, self.types
        end = min(stop, index + max_events)
        if all(code in codes for code in set(types[index:end])):
            # The common case: every event is wanted, so the run is one slice.
            if index == end:
                return [], end
            limit = starts[index] + budget
            if first:
                limit = max(limit, starts[index + 1])
            end = min(end, bisect_right(starts, limit, index + 1, end + 1) - 1)
            if end == index:  # not even the first event fits what is left of the batch
                return [], index
            run = body[starts[index] : starts[end] - 1].replace(b"\n", b",")
            return [run], end
        parts: list[bytes] = []
        used = 0
        while index < stop and len(parts) < max_events:
            if types[index] in codes:
                size = starts[index + 1] - starts[index]
                if (parts or not first) and used + size > budget:
                    break
                parts.append(body[starts[index] : starts[index + 1] - 1])
                used += size
            index += 1
        return parts, index


def format_counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{kind}={n}" for kind, n in sorted(counts.items()))


def parse_counts(text: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {kind: int(n) for kind, n in pairs}
