"""Lines to notifications: decode -> validate -> map, one function per step.

``LineProcessor.process`` takes the complete lines a source read and returns what the
spool should keep. Rejected lines are counted by reason and written to the source's
rejected-lines file; nothing a bad line does stops the lines after it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

from agent.errors import RejectedLine
from agent.formats import EventFormat, MappingContext
from agent.pipeline.rejected import RejectedLog
from agent.spool import NewSegment
from agent.telemetry import Metrics

log = logging.getLogger(__name__)


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
        rejected: RejectedLog,
    ) -> None:
        self.source = source
        self.format = fmt
        self.ctx = ctx
        self.metrics = metrics
        self.rejected = rejected

    def process(self, lines: Iterable[bytes]) -> NewSegment:
        """Complete lines (without their ``\\n``) -> the accepted events, encoded."""
        keep = NewSegment()
        outcomes: Counter[tuple[str, str]] = Counter()
        convert = self.format.convert
        ctx = self.ctx
        dumps = orjson.dumps
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                obj = decode_line(line)
                event_type, notification = convert(obj, ctx)
            except RejectedLine as rejected:
                if rejected.reason == "invalid_json" and is_blank(line):
                    continue
                outcomes[(rejected.event_type, rejected.reason)] += 1
                self.rejected.write(rejected.reason, rejected.detail, line, len(line))
                continue
            outcomes[(event_type, "accepted")] += 1
            if notification is not None:
                keep.add(event_type, dumps(notification))
        self._count(outcomes)
        return keep

    def reject_too_long(self, head: bytes, length: int) -> None:
        """A line longer than ``max_line_bytes``: only its head was ever held."""
        self.metrics.events.labels(self.source, "unknown", "line_too_long").inc()
        self.rejected.write(
            "line_too_long", f"the line is {length} bytes long", head[:1024], length
        )

    def _count(self, outcomes: Counter[tuple[str, str]]) -> None:
        for (event_type, outcome), n in outcomes.items():
            self.metrics.events.labels(self.source, event_type, outcome).inc(n)
