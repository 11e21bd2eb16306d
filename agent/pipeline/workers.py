"""A burst's lines converted in more than one process (``sources[file].workers``).

With ``workers: N`` (N > 1), a read of at least ``BURST_BYTES`` (a backlog, a big file
found at start) is cut into N runs of whole lines, in order. N - 1 of them go to worker
processes (a pool started, with ``forkserver``, at the first burst: never ``fork`` in a
threaded process), the first is converted in the source's own thread meanwhile. The
results are taken back in the order of the runs and joined into one ``NewSegment``: the
same events, in the same order, as one thread makes; the source keeps it with the read's
checkpoint in one spool append, as always. Smaller reads (a file that grows a few lines
at a time) are converted in the source's thread and pay nothing.

Each run's counts and rejected lines are recorded where it is converted and applied by
the source, in the order of the runs, once every run is back: so the metrics, the
rejected-lines file and the spool see one read exactly as one thread would, and a
failure half-way has applied nothing. A worker that dies (killed, out of memory) breaks
the pool: the whole read is converted again in the source's thread, the failure is
logged and counted in ``tailhook_pipeline_worker_failures_total``, and a new pool is
started at the first burst a minute later. A crash of the agent loses nothing either: nothing of a
read is kept before all of it is converted, and a worker ends at once when the agent
does, however it ends (it waits on the agent's pidfd); the fork server follows.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from agent.formats import EventFormat, MappingContext, load_format
from agent.pipeline import LineProcessor
from agent.spool import NewSegment
from agent.spool.routes import Facts
from agent.telemetry import Metrics, fields

log = logging.getLogger(__name__)

#: A read at least this large is a burst, converted by the workers.
BURST_BYTES = 256 * 1024
#: After a worker failed, bursts are converted in the source's thread this long, so a
#: pool that cannot work here costs one error a minute, not one per burst.
RETRY_SECONDS = 60.0

#: (reason, detail, line, length): one rejected line, as ``RejectedLog.write`` takes it.
Rejection = tuple[str, str, bytes, int]


@dataclass
class Recorded:
    """What converting one run of lines did besides its events: counts and rejections."""

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)

    def write(self, reason: str, detail: str, line: bytes, length: int) -> None:
        """Stands in for ``RejectedLog.write``: the line is written later, in order."""
        self.rejections.append((reason, detail, bytes(line), length))


class RecordingProcessor(LineProcessor):
    """A ``LineProcessor`` that records its counts and rejected lines instead of
    applying them (``Recorded``)."""

    def __init__(
        self, source: str, fmt: EventFormat, ctx: MappingContext, metrics: Metrics, judged: bool
    ) -> None:
        self.recorded = Recorded()
        super().__init__(source, fmt, ctx, metrics, self.recorded, lambda: judged)

    def _count(self, accepted: Counter[str], rejected: Counter[tuple[str, str]]) -> None:
        self.recorded.accepted.update(accepted)
        self.recorded.rejected.update(rejected)


@dataclass(frozen=True)
class Recipe:
    """How a worker builds its processor: picklable, unlike the processor itself."""

    source: str
    format: str
    ctx: MappingContext


@dataclass(frozen=True)
class Converted:
    """One run's events as ``NewSegment`` holds them, and what ``Recorded`` holds."""

    body: bytearray
    starts: bytes
    codes: str
    facts: list[Facts]
    fields: dict[int, dict[str, Any]]
    recorded: Recorded

    @classmethod
    def of(cls, segment: NewSegment, recorded: Recorded) -> Converted:
        codes, facts, fields = "".join(segment.codes), segment.facts, segment.fields
        return cls(segment.body, segment.starts.tobytes(), codes, facts, fields, recorded)


# -- in a worker process ------------------------------------------------------------------

_formats: dict[str, EventFormat] = {}
_metrics: list[Metrics] = []


def _start_worker(agent: int) -> None:
    """A worker leaves SIGTERM and SIGINT to the agent, which stops it when it stops,
    and ends as soon as the agent has ended, killed or not: its parent is the fork
    server, and nothing it reads ever sees the agent go."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(agent,), name="agent-watch", daemon=True).start()


def _end_with(agent: int) -> None:
    """Wait for the process ``agent`` to end, then end this one."""
    try:
        pidfd = os.pidfd_open(agent)
    except ProcessLookupError:
        os._exit(0)
    select.select([pidfd], [], [])  # readable once the process has ended
    os._exit(0)


def convert_run(recipe: Recipe, judged: bool, run: bytes) -> Converted:
    """Convert one run of lines (joined by ``\\n``) as the source's processor would."""
    fmt = _formats.get(recipe.format)
    if fmt is None:
        fmt = _formats[recipe.format] = load_format(recipe.format)
    if not _metrics:
        _metrics.append(Metrics(CollectorRegistry()))  # never read: counts are recorded
    processor = RecordingProcessor(recipe.source, fmt, recipe.ctx, _metrics[0], judged)
    segment = processor.process(run.split(b"\n"))
    return Converted.of(segment, processor.recorded)


# -- in the agent -------------------------------------------------------------------------


def split_runs(lines: list[bytes], count: int) -> list[list[bytes]]:
    """``lines`` cut into ``count`` runs of about as many bytes each, in order."""
    total = sum(map(len, lines)) + len(lines)
    runs: list[list[bytes]] = []
    start, size, target = 0, 0, total / count
    for index, line in enumerate(lines):
        size += len(line) + 1
        if size >= target * (len(runs) + 1) and len(runs) < count - 1:
            runs.append(lines[start : index + 1])
            start = index + 1
    runs.append(lines[start:])
    return [run for run in runs if run]


def join_into(segment: NewSegment, part: Converted) -> None:
    """Append one run's events to ``segment`` (which holds the runs before it)."""
    base, first = len(segment.body), len(segment.codes)
    starts = type(segment.starts)(segment.starts.typecode)
    starts.frombytes(part.starts)
    segment.starts.extend(start + base for start in starts)
    segment.body += part.body
    segment.codes.extend(part.codes)
    segment.facts.extend(part.facts)
    for index, line_fields in part.fields.items():
        segment.fields[first + index] = line_fields


class BurstConverter:
    """Converts a source's reads: a burst in ``workers`` processes, the rest in-thread."""

    def __init__(self, processor: LineProcessor, workers: int) -> None:
        self.processor = processor
        self.workers = workers
        self.recipe = Recipe(processor.source, processor.format.name, processor.ctx)
        self._pool: ProcessPoolExecutor | None = None
        self.bursts = 0  # reads converted by the workers
        self.retry_seconds = RETRY_SECONDS
        self._failed_at: float | None = None
        self._failures = processor.metrics.worker_failures.labels(source=processor.source)

    def convert(self, lines: list[bytes], size: int) -> NewSegment:
        """The events of one read of ``size`` bytes, in order."""
        if self.workers < 2 or size < BURST_BYTES or len(lines) < self.workers:
            return self.processor.process(lines)
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < self.retry_seconds:
            return self.processor.process(lines)
        try:
            segment = self._in_workers(lines)
        except (BrokenProcessPool, OSError) as exc:
            self._failed(exc)
            return self.processor.process(lines)
        self.bursts += 1
        return segment

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none before the first burst)."""
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(processes)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _in_workers(self, lines: list[bytes]) -> NewSegment:
        pool = self._pool or self._start_pool()
        first, *rest = split_runs(lines, self.workers)
        judged = self.processor.filtering()
        futures: list[Future[Converted]] = [
            pool.submit(convert_run, self.recipe, judged, b"\n".join(run)) for run in rest
        ]
        here = RecordingProcessor(
            self.recipe.source,
            self.processor.format,
            self.processor.ctx,
            self.processor.metrics,
            judged,
        )
        try:
            segment = here.process(first)
            parts = [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
        self._apply(here.recorded)
        for part in parts:
            join_into(segment, part)
            self._apply(part.recorded)
        return segment

    def _apply(self, recorded: Recorded) -> None:
        """Write a run's rejected lines and add its counts, as ``process`` would have."""
        for rejection in recorded.rejections:
            self.processor.rejected.write(*rejection)
        self.processor.count(recorded.accepted, recorded.rejected)

    def _start_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["agent.pipeline.workers"])
        self._pool = ProcessPoolExecutor(
            self.workers - 1,
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        return self._pool

    def _failed(self, exc: BaseException) -> None:
        log.error(
            "A conversion worker failed; the read is converted in the source's thread, and"
            " so are bursts for a minute, then a new pool is started",
            extra=fields(source=self.processor.source, error=str(exc) or type(exc).__name__),
        )
        self._failures.inc()
        self._failed_at = time.monotonic()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
