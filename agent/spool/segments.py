"""Segments: how the spool encodes events, positions and batches.

A segment is the events of one source read: their serialised notifications joined by
newlines (orjson never writes a raw newline), one type letter per event, and where each
event starts. A position is ``segment << INDEX_BITS | index``. Beside them, only when
there is something to say:

- ``views``: for a webhook whose filter excluded some of the segment's events, its view
  of the type letters, ``-`` in place of each event it does not take. Everything that
  counts or takes a webhook's events reads its view (``StoredSegment.view``) instead of
  the type letters, so an excluded event is never in its backlog nor sent; a webhook
  without a view takes every event of its types, as fast as ever;
- ``fields``: by event index, what a vulnerability's §5a envelope needs of its input
  line and its §5 object lacks (``agent.formats.wallarm.vulnerability_fields``).
"""

from __future__ import annotations

import sys
import uuid
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.spool.routes import EventFilter, Facts, Form

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


#: The filtered webhooks as ``keeping`` applies them: name, type letters, filter.
Filters = tuple[tuple[str, str, EventFilter], ...]


class NewSegment:
    """The events of one read, encoded as the spool keeps them, built one event at a time.

    Each serialised notification is copied into one buffer as it is made, rather than
    kept as its own bytes object: with thousands of objects alive at once, every new
    one costs the allocator fresh memory (measured: ~4 µs per event more). ``facts``
    (what filters judge) and ``fields`` (a vulnerability's line fields) go beside.
    """

    __slots__ = ("body", "codes", "facts", "fields", "starts")

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.body = bytearray()
        self.starts = array(START_TYPECODE)  # where each event begins in ``body``
        self.facts: list[Facts] = []
        self.fields: dict[int, dict[str, Any]] = {}  # event index -> line fields

    def add(
        self,
        event_type: str,
        notification: bytes,
        facts: Facts = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Append one event (the pipeline's hot path inlines the same steps)."""
        if fields is not None:
            self.fields[len(self.codes)] = fields
        self.starts.append(len(self.body))
        self.body += notification + b"\n"
        self.codes.append(TYPE_CODES[event_type])
        self.facts.append(facts)

    @classmethod
    def of(cls, events: Iterable[tuple[str, bytes]]) -> NewSegment:
        segment = cls()
        for event_type, notification in events:
            segment.add(event_type, notification)
        return segment

    def __len__(self) -> int:
        return len(self.codes)

    def keeping(self, wanted: str, filters: Filters = ()) -> Kept:
        """The events some webhook takes: those of a type letter in ``wanted`` (the
        types of the unfiltered webhooks), and those a filtered webhook takes and its
        filter admits; with the filtered webhooks' views and what each excluded."""
        types = "".join(self.codes)
        keep = None if all(code in wanted for code in set(types)) else [c in wanted for c in types]
        views: dict[str, str] = {}
        excluded: Counter[tuple[str, str]] = Counter()
        for name, codes, event_filter in filters:
            admits = event_filter.admits
            marks = [
                code if code not in codes or admits(facts) else "-"
                for code, facts in zip(types, self.facts, strict=True)
            ]
            view = "".join(marks)
            if view == types:
                continue  # it takes every event of its types
            views[name] = view
            for code in codes:
                if n := types.count(code) - view.count(code):
                    excluded[(name, CODE_TYPES[code])] = n
            if keep is not None:
                keep = [k or mark in codes for k, mark in zip(keep, marks, strict=True)]
        if keep is None or all(keep):
            # Each event ends with a newline; the last one's goes. Through a view: slicing
            # the bytearray itself would copy the read's events once more (measured: ~2 ms
            # per MiB, as each copy of that size is memory the allocator maps anew).
            body = bytes(memoryview(self.body)[:-1])
            starts = offsets_to_bytes(self.starts)
            return Kept(types, body, starts, views, dict(self.fields), excluded)
        return self._subset(keep, views, excluded)

    def _subset(
        self, keep: list[bool], views: dict[str, str], excluded: Counter[tuple[str, str]]
    ) -> Kept:
        """The events marked in ``keep``, renumbered, with the views cut to them."""
        starts, body, count = self.starts, self.body, len(self.codes)
        chosen = [index for index, wanted in enumerate(keep) if wanted]
        parts: list[bytearray] = []
        kept_starts = array(START_TYPECODE)
        fields: dict[int, dict[str, Any]] = {}
        at = 0
        for new, index in enumerate(chosen):
            end = starts[index + 1] - 1 if index + 1 < count else len(body) - 1
            part = body[starts[index] : end]
            kept_starts.append(at)
            parts.append(part)
            at += len(part) + 1
            if index in self.fields:
                fields[new] = self.fields[index]
        types = "".join(self.codes[index] for index in chosen)
        cut = {name: "".join(view[index] for index in chosen) for name, view in views.items()}
        return Kept(
            types,
            b"\n".join(parts),
            offsets_to_bytes(kept_starts),
            {name: view for name, view in cut.items() if view != types},
            fields,
            excluded,
        )


@dataclass(frozen=True)
class Kept:
    """A read's events as the spool keeps them: those some webhook takes."""

    types: str  # one letter per event; empty: nothing to keep
    body: bytes
    starts: bytes
    views: dict[str, str]  # webhook -> its view of ``types`` (see the module docstring)
    fields: dict[int, dict[str, Any]]  # event index -> a vulnerability's line fields
    excluded: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (webhook, event type) -> events of its types its filter excluded

    def encoded(self) -> tuple[str | None, str | None]:
        """``views`` and ``fields`` as their columns hold them (None: nothing)."""
        views = orjson.dumps(self.views).decode() if self.views else None
        fields = (
            orjson.dumps({str(index): value for index, value in self.fields.items()}).decode()
            if self.fields
            else None
        )
        return views, fields


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
    body: bytes  # as sent, in its form
    type_counts: Mapping[str, int]
    created: float
    attempts: int
    form: Form  # how the body was made from the stored events (recorded with it)
    events: bytes  # the §5 objects as a JSON array (a dead letter keeps these)

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
    views: dict[str, str] = field(default_factory=dict)
    fields: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.types)

    def view(self, webhook: str) -> str:
        """The type letters as ``webhook`` sees them: ``-`` for an event its filter
        excluded."""
        return self.views.get(webhook, self.types)

    @classmethod
    def load(
        cls,
        types: str,
        body: bytes,
        starts: bytes,
        created: float,
        target: str | None,
        views: str | None = None,
        fields: str | None = None,
    ) -> StoredSegment:
        # A segment migrated from an older layout may not have its starts stored.
        offsets = offsets_from_bytes(starts) if starts or not types else event_starts(body)
        offsets.append(len(body) + 1)
        return cls(
            types,
            body,
            offsets.tolist(),
            created,
            target,
            orjson.loads(views) if views else {},
            {int(index): value for index, value in orjson.loads(fields).items()} if fields else {},
        )

    def take(
        self,
        index: int,
        stop: int,
        types: str,
        codes: str,
        max_events: int,
        budget: int,
        first: bool,
    ) -> tuple[list[bytes], int]:
        """Events in ``[index, stop)`` whose letter in ``types`` (the webhook's view) is
        in ``codes``, at most ``max_events`` of them and ``budget`` bytes (each counted
        with one separator); with ``first`` (nothing taken yet for the batch) the first
        event fits whatever its size. Returns their bytes as stored (runs of adjacent
        events joined by newlines) and the index after the last event looked at."""
        starts, body = self.starts, self.body
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
            return [body[starts[index] : starts[end] - 1]], end
        # Some are left out: one at a time, each as stored (the classic form's size).
        parts, _, after = self.take_each(
            index, stop, types, codes, max_events, budget, first, STORED_AS_IS
        )
        return parts, after

    def take_each(
        self,
        index: int,
        stop: int,
        types: str,
        codes: str,
        max_events: int,
        budget: int,
        first: bool,
        form: Form,
    ) -> tuple[list[bytes], list[bytes], int]:
        """As ``take``, one event at a time, each made into ``form``'s payload and
        counted at that size. Returns the events as stored, as made, and the index
        after the last event looked at."""
        starts, body, fields, wrap = self.starts, self.body, self.fields, form.wrap
        stored: list[bytes] = []
        made: list[bytes] = []
        used = 0
        while index < stop and len(made) < max_events:
            if types[index] in codes:
                raw = body[starts[index] : starts[index + 1] - 1]
                out = wrap(raw, fields.get(index) if fields else None)
                size = len(out) + 1
                if used + size > budget and (made or not first):
                    break
                stored.append(raw)
                made.append(out)
                used += size
            index += 1
        return stored, made, index


#: The form whose events are sent as they are stored (``take``'s slow path).
STORED_AS_IS = Form()


def format_counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{kind}={n}" for kind, n in sorted(counts.items()))


def parse_counts(text: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {kind: int(n) for kind, n in pairs}
