"""In-process measurements on the lines of a benchmark case: the floor, and what each
stage of the agent's path costs per event.

The floor (``measure_floor``) is the least any agent must do per event, in one
process, with none of tailhook's machinery: read the file in 256 KiB chunks, split it
into lines, ``orjson.loads``, validate with jsonschema_rs against the project's hit
schema (``schemas/hit.schema.json``), map (``agent.formats.native.map_hit``) and
``orjson.dumps``. It calls jsonschema_rs and the mapping directly rather than through
the format, so it stays the floor issue 11 names whatever path the agent's format
takes; ``check_floor_matches_format`` holds it to the same notifications as the native
format's ``convert`` (today the same calls, less the dispatch on ``event``).

The stages (``measure_stages``) are the agent's own functions, called as its threads
call them, one source read (``commit_bytes``) at a time, and timed one by one with
``time.process_time``: the file source's read and split; the pipeline
(``LineProcessor.process``) and, apart, its parts (decode, validate, map, encode); the
spool's keep (segment and checkpoint in one transaction); the sink's per-step check for a
batch in flight, forming and recording a batch of ``max_events``, the HTTP exchange with
the loopback receiver (headers and ``Transport.send``), finishing the batch; and the
metric updates the source and the sink make per read and per batch.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema_rs
import orjson
from prometheus_client import CollectorRegistry

from agent.config import parse_config
from agent.formats import MappingContext, load_format, native, native_fast
from agent.formats.native import map_hit
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
from agent.pipeline.routing import routes_of
from agent.schemas import load_schema
from agent.sinks.transport import Transport
from agent.sinks.webhook import request_headers
from agent.sources import commit_bytes
from agent.sources.file import CHUNK_BYTES
from agent.sources.lines import LineSplitter
from agent.spool import Checkpoint, Spool
from agent.telemetry import Metrics

#: The stages in the order the agent runs them; the indented ones are the parts of
#: the pipeline, measured apart (``PIPELINE`` is what the agent runs).
READ = "read + split (file source)"
FAST_DECODE = "  decode + validate (msgspec, typed)"
FAST_MAP = "  map (native_fast.map_hit_line)"
FAST_ENCODE = "  encode (msgspec, into the segment)"
DECODE = "  decode (orjson.loads)"
VALIDATE = "  validate (jsonschema_rs, hit schema)"
MAP = "  map (native.map_hit)"
ENCODE = "  encode (orjson.dumps into the segment)"
PIPELINE = "pipeline as run (LineProcessor.process)"
KEEP = "spool keep (segment + checkpoint, 1 txn/read)"
CHECK = "sink: batch in flight? (open_batch per step)"
FORM = "batch form + record (next_batch)"
SEND = "delivery: headers + HTTP exchange"
FINISH = "batch finish (finish_batch)"
METRICS = "metric updates (per read, per batch)"
AGENT_PATH = (READ, PIPELINE, KEEP, CHECK, FORM, SEND, FINISH, METRICS)
#: The pipeline's parts as the agent runs them (the fast path takes every line here),
#: and the exact path's (the floor's), measured on the same lines for comparison.
PARTS = (FAST_DECODE, FAST_MAP, FAST_ENCODE)
EXACT_PARTS = (DECODE, VALIDATE, MAP, ENCODE)


@dataclass(frozen=True)
class Floor:
    """The floor's CPU seconds per event and its rate (events per wall-clock second)."""

    cpu_per_event: float
    rate: float


def hit_validator() -> jsonschema_rs.Draft202012Validator:
    """jsonschema_rs compiled with the project's hit schema."""
    return jsonschema_rs.Draft202012Validator(load_schema("hit"))


def check_floor_matches_format(path: Path, count: int = 200) -> None:
    """The floor's notification of each of the first ``count`` lines is byte for byte
    the native format's; raises SystemExit otherwise (the floor would measure another
    thing)."""
    fmt, ctx, validator = load_format("native"), MappingContext(), hit_validator()
    with path.open("rb") as src:
        for n, line in zip(range(count), src, strict=False):
            obj = orjson.loads(line)
            ours = orjson.dumps(map_hit(obj, ctx)) if validator.is_valid(obj) else None
            _, theirs = fmt.convert(orjson.loads(line), ctx)
            if ours != orjson.dumps(theirs):
                raise SystemExit(f"line {n}: the floor's notification differs from convert's")


def measure_floor(path: Path) -> Floor:
    """Read -> split -> orjson.loads -> jsonschema_rs -> map -> orjson.dumps, in process."""
    ctx, validator = MappingContext(), hit_validator()
    is_valid, loads, dumps = validator.is_valid, orjson.loads, orjson.dumps
    splitter = LineSplitter(1 << 20)
    count = invalid = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(CHUNK_BYTES):
            lines, _ = splitter.feed(chunk)
            for line in lines:
                obj = loads(line)
                if not is_valid(obj):
                    invalid += 1
                    continue
                dumps(map_hit(obj, ctx))
                count += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if invalid:
        raise SystemExit(f"{invalid} lines are invalid against the hit schema")
    return Floor(cpu / count, count / wall)


def forget_mapping_caches() -> None:
    """Empty the native format's caches (addresses, times, attack types, parameters), so
    that a pass over a read finds in them what the agent would: the previous reads'
    keys, not this one's."""
    for module in (native, native_fast):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    native_fast._parameters.clear()


class Stopwatch:
    """CPU seconds spent per stage (``time.process_time``: every thread of this one)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._mark = time.process_time()

    def start(self) -> None:
        self._mark = time.process_time()

    def lap(self, stage: str) -> None:
        now = time.process_time()
        self.spent[stage] += now - self._mark
        self._mark = now


def bench_config(directory: Path, log: Path, url: str, max_events: int) -> str:
    return (
        f"state_dir: {directory}\n"
        f"sources: [{{name: bench, type: file, paths: ['{log}']}}]\n"
        f"webhooks: [{{name: sink, url: '{url}', events: [hit],"
        f" batch: {{max_events: {max_events}}}}}]\n"
    )


class StagedAgent:
    """The agent's path for one file and one webhook, run stage by stage in this thread."""

    def __init__(self, directory: Path, log: Path, url: str, max_events: int = 500) -> None:
        config = parse_config(bench_config(directory, log, url, max_events), {})
        self.hook = config.webhooks[0]
        self.metrics = Metrics(CollectorRegistry())
        self.spool = Spool(directory / "spool.db", self.metrics)
        self.spool.configure_webhooks(routes_of(config))
        self.processor = LineProcessor(
            "bench",
            load_format("native"),
            MappingContext(),
            self.metrics,
            RejectedLog(directory, "bench"),
            filtering=lambda: self.spool.filtering,
        )
        self.transport = Transport(self.hook)
        self.watch = Stopwatch()
        self.validator = hit_validator()
        self.ctx = MappingContext()
        self.delivered = 0
        self._source_lines = self.metrics.source_lines.labels(source="bench")
        self._source_bytes = self.metrics.source_bytes.labels(source="bench")
        self._duration = self.metrics.request_duration.labels(webhook=self.hook.name)

    def read(self, fd: int, position: int, splitter: LineSplitter) -> tuple[list[bytes], int]:
        """One read of the file source: up to ``commit_bytes`` in 256 KiB chunks."""
        limit = commit_bytes(self.spool.max_bytes)
        lines: list[bytes] = []
        consumed = 0
        while consumed < limit and (data := os.pread(fd, min(CHUNK_BYTES, limit), position)):
            position += len(data)
            consumed += len(data)
            complete, _ = splitter.feed(data)
            lines.extend(complete)
        return lines, consumed

    def parts(self, lines: list[bytes]) -> None:
        """The pipeline's parts, the exact way and the fast path's, each over the whole
        read (their results are dropped; the two are checked to write the same bytes)."""
        watch, ctx, loads, dumps = self.watch, self.ctx, orjson.loads, orjson.dumps
        forget_mapping_caches()
        watch.start()
        objs = [loads(line) for line in lines]
        watch.lap(DECODE)
        if not all([self.validator.is_valid(obj) for obj in objs]):
            raise SystemExit("a line is invalid against the hit schema")
        watch.lap(VALIDATE)
        notifications = [map_hit(obj, ctx) for obj in objs]
        watch.lap(MAP)
        body = bytearray()
        starts = []
        for notification in notifications:
            starts.append(len(body))
            body += dumps(notification, option=orjson.OPT_APPEND_NEWLINE)
        watch.lap(ENCODE)
        forget_mapping_caches()
        decode, map_line, encode_into = (
            native_fast._decode,
            native_fast.map_hit_line,
            native_fast.encode_into,
        )
        watch.start()
        typed = [decode(line) for line in lines]
        watch.lap(FAST_DECODE)
        notes = [map_line(hit) for hit in typed]
        watch.lap(FAST_MAP)
        fast_body = bytearray()
        fast_starts = []
        for note in notes:
            fast_starts.append(len(fast_body))
            encode_into(note, fast_body, -1)
            fast_body.append(10)
        watch.lap(FAST_ENCODE)
        if fast_body != body:
            raise SystemExit("the fast path did not take every line, or wrote other bytes")

    def deliver(self, everything: bool) -> None:
        """Deliver full batches (and, with ``everything``, the rest), as the sink does."""
        hook, spool, watch = self.hook, self.spool, self.watch
        limits = hook.batch
        while everything or spool.backlog(hook.name) >= limits.max_events:
            watch.start()
            if spool.open_batch(hook.name) is not None:
                raise SystemExit("a batch was left in flight")
            watch.lap(CHECK)
            batch = spool.next_batch(hook.name, limits.max_events, limits.max_bytes)
            watch.lap(FORM)
            if batch is None:
                return
            headers = request_headers(hook, batch.webhook_id, batch.body, batch.form.content_type)
            answer = self.transport.send(batch.body, headers)
            watch.lap(SEND)
            if answer.status != 200:
                raise SystemExit(f"the receiver answered {answer.status}")
            spool.finish_batch(hook.name, batch)
            watch.lap(FINISH)
            self._count_batch(batch.type_counts)
            self.delivered += batch.count

    def count_read(self, lines: int, consumed: int) -> None:
        """The file source's metric updates for one read."""
        self.watch.start()
        self._source_lines.inc(lines)
        self._source_bytes.inc(consumed)
        self.watch.lap(METRICS)

    def _count_batch(self, type_counts: Mapping[str, int]) -> None:
        """The sink's metric updates for one delivered batch."""
        self.watch.start()
        for kind, n in type_counts.items():
            self.metrics.delivered.labels(webhook=self.hook.name, event_type=kind).inc(n)
        self.metrics.requests.labels(webhook=self.hook.name, code="200").inc()
        self._duration.observe(0.001)
        self.watch.lap(METRICS)

    def close(self) -> None:
        self.transport.close()
        self.spool.close()


def measure_stages(path: Path, directory: Path, url: str) -> dict[str, float]:
    """CPU seconds per event of each stage, over every line of ``path``."""
    agent = StagedAgent(directory, path, url)
    watch = agent.watch
    splitter = LineSplitter(1 << 20)
    position = count = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            watch.start()
            lines, consumed = agent.read(fd, position, splitter)
            watch.lap(READ)
            if not consumed:
                break
            position += consumed
            agent.parts(lines)
            forget_mapping_caches()  # the parts saw these lines; the agent had not
            watch.start()
            segment = agent.processor.process(lines)
            watch.lap(PIPELINE)
            checkpoint = Checkpoint("1:1", str(path), position - splitter.pending, b"")
            agent.spool.append("bench", segment, checkpoint)
            watch.lap(KEEP)
            agent.count_read(len(lines), consumed)
            count += len(lines)
            agent.deliver(everything=False)
        agent.deliver(everything=True)
    finally:
        os.close(fd)
        agent.close()
    if agent.delivered != count:
        raise SystemExit(f"delivered {agent.delivered} of {count} events")
    return {stage: seconds / count for stage, seconds in watch.spent.items()}
