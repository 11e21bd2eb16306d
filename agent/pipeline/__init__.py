"""Lines to notifications: decode -> validate -> map, one function per step.

``LineProcessor.process`` takes the complete lines a source read and returns what the
spool should keep: each notification serialised, with what the webhooks' filters judge
of it (its ``Facts``: type, block status, attack type, domain, threat, taken from the
mapped object before it is serialised, while some webhook has a filter) and, for a
vulnerability, the line fields its §5a envelope needs. Rejected lines are counted by
reason and written to the source's rejected-lines file; nothing a bad line does stops
the lines after it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from agent.errors import RejectedLine
from agent.formats import EventFormat, MappingContext
from agent.formats.native_fast import encode_into
from agent.formats.wallarm import vulnerability_fields
from agent.pipeline.rejected import RejectedLines
from agent.spool import NewSegment
from agent.spool.routes import facts_of
from agent.spool.segments import TYPE_CODES
from agent.telemetry import Metrics

log = logging.getLogger(__name__)
HIT, NEWLINE = TYPE_CODES["hit"], ord("\n")


def decode_line(line: bytes) -> Any:
    """Bytes of one line (without its newline) -> a JSON value, or RejectedLine."""
    if b"\x00" in line:
        raise RejectedLine("invalid_encoding", "the line holds a NUL byte")
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise RejectedLine("invalid_encoding", f"not UTF-8: {bad.reason}") from exc
        raise RejectedLine("invalid_json", str(exc)) from exc


def is_blank(line: bytes) -> bool:
    return not line.strip()


class LineProcessor:
    """The pipeline for one source: its format, its metrics, its rejected-lines file."""

    def __init__(
        self,
        source: str,
        fmt: EventFormat,
        ctx: MappingContext,
        metrics: Metrics,
        rejected: RejectedLines,
        filtering: Callable[[], bool] = lambda: True,
    ) -> None:
        """``filtering``: whether some webhook has a filter now (``Spool.filtering``);
        without one, no event's facts are taken (they would judge nothing)."""
        self.source = source
        self.format = fmt
        self.ctx = ctx
        self.metrics = metrics
        self.rejected = rejected
        self.filtering = filtering

    def process(self, lines: Iterable[bytes]) -> NewSegment:
        """Complete lines (without their ``\\n``) -> the accepted events, encoded."""
        # The hot path: names bound locally, NewSegment.add inlined, a hit the fast path
        # takes encoded straight into the segment's buffer and counted in a local.
        keep = NewSegment()
        starts, body, codes, facts = keep.starts, keep.body, keep.codes, keep.facts
        judged = self.filtering()
        hits = 0
        accepted: Counter[str] = Counter()
        rejected_lines: Counter[tuple[str, str]] = Counter()
        convert, ctx, loads, dumps = self.format.convert, self.ctx, orjson.loads, orjson.dumps
        fast_hit, hit_code = self.format.fast_hit, HIT
        for line in lines:
            # The fast path takes most hits (a "\\r" before the newline is JSON white
            # space to it); any other line takes the exact path, which decides its
            # verdict and reason (agent.formats.native_fast). A NUL byte fails both
            # decoders, and decode_line names it.
            note = fast_hit(line)
            if note is not None:
                if judged:
                    facts.append(("hit", note.block_status, note.type, note.domain, None))
                else:
                    facts.append(None)
                starts.append(len(body))
                encode_into(note, body, -1)
                body.append(NEWLINE)
                codes.append(hit_code)
                hits += 1
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError:
                    obj = decode_line(line)  # raises with the reason
                event_type, notification = convert(obj, ctx)
            except RejectedLine as rejected:
                if rejected.reason == "invalid_json" and is_blank(line):
                    continue
                rejected_lines[(rejected.event_type, rejected.reason)] += 1
                self.rejected.write(rejected.reason, rejected.detail, line, len(line))
                continue
            accepted[event_type] += 1
            if notification is None:
                continue
            facts.append(facts_of(event_type, notification) if judged else None)
            if event_type == "vulnerability":
                keep.fields[len(codes)] = vulnerability_fields(obj)
            starts.append(len(body))
            body += dumps(notification, option=orjson.OPT_APPEND_NEWLINE)
            codes.append(TYPE_CODES[event_type])
        if hits:
            accepted["hit"] += hits
        self._count(accepted, rejected_lines)
        return keep

    def reject_too_long(self, head: bytes, length: int) -> None:
        """A line longer than ``max_line_bytes``: only its head was ever held."""
        self.metrics.events.labels(self.source, "unknown", "line_too_long").inc()
        self.rejected.write(
            "line_too_long", f"the line is {length} bytes long", head[:1024], length
        )

    def count(self, accepted: Counter[str], rejected: Counter[tuple[str, str]]) -> None:
        """Add a read's events to ``tailhook_events_total``, by type and outcome."""
        self._count(accepted, rejected)

    def _count(self, accepted: Counter[str], rejected: Counter[tuple[str, str]]) -> None:
        for event_type, n in accepted.items():
            self.metrics.events.labels(self.source, event_type, "accepted").inc(n)
        for (event_type, outcome), n in rejected.items():
            self.metrics.events.labels(self.source, event_type, outcome).inc(n)
