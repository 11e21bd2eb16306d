"""``sources[file].workers``: a burst converted in more than one process keeps what one
thread keeps (the same segments, offsets, rejected lines and counts), loses and doubles
nothing when the agent is killed mid-burst, and survives a worker's death."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agent.config import FileSourceConfig
from agent.formats import MappingContext, load_format
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
from agent.pipeline.workers import BURST_BYTES, split_runs
from agent.sources.file import FileSource
from agent.spool import Spool
from agent.telemetry import Metrics
from tests.agent_support import hit_line, wait_until
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.procfs import descendants, stat_fields

#: Lines that are not accepted, and where they go (past the first run of a read, so a
#: worker rejects some of them).
BAD_LINES = {
    17: b"not json at all",
    2500: b'{"event": "hit"}',
    4001: b'{"event": "nonsense"}',
    4002: b"",
    5555: b"\xff\xfe not utf-8",
}
#: Lines of every event type (a vulnerability keeps line fields by its event index).
OTHER_TYPES = (Path(__file__).parent / "data" / "native" / "detections.jsonl").read_bytes()


def burst_file(path: Path, count: int, bad: dict[int, bytes]) -> None:
    """``count`` lines: hits numbered by line, but for ``bad``."""
    with path.open("wb") as out:
        for n in range(count):
            out.write(bad.get(n, hit_line(n)) + b"\n")


def read_whole_file(state: Path, log: Path, workers: int) -> tuple[FileSource, Metrics]:
    """A file source with ``workers`` reading ``log`` to its end into a fresh spool."""
    state.mkdir(mode=0o700)
    metrics = Metrics(CollectorRegistry())
    spool = Spool(state / "spool.db", metrics)
    spool.configure_webhooks({"soc": frozenset({"hit", "vulnerability", "system", "scope"})})
    processor = LineProcessor(
        "waf", load_format("native"), MappingContext(), metrics, RejectedLog(state, "waf")
    )
    config = FileSourceConfig(name="waf", paths=(str(log),), workers=workers)
    source = FileSource(config, spool, processor, metrics, state)
    source._open_initial()
    try:
        for _ in range(1000):
            if not source._read_all():
                break
    finally:
        source.teardown()  # closes its files and its workers
        spool.close()
    return source, metrics


def spool_contents(state: Path) -> tuple[list[tuple[object, ...]], list[tuple[str, int]]]:
    """Every segment (types, body, starts, views, fields) in order, and every checkpoint."""
    db = sqlite3.connect(state / "spool.db")
    try:
        segments = db.execute(
            "SELECT types, body, starts, views, fields FROM segments ORDER BY seq"
        ).fetchall()
        checkpoints = db.execute(
            "SELECT key, offset FROM checkpoints ORDER BY source, key"
        ).fetchall()
    finally:
        db.close()
    return segments, checkpoints


def rejected_entries(state: Path) -> list[dict[str, object]]:
    entries = []
    for line in (state / "rejected" / "waf.jsonl").read_bytes().splitlines():
        entry = orjson.loads(line)
        del entry["time"]
        entries.append(entry)
    return entries


def events_counted(metrics: Metrics) -> dict[tuple[str, ...], float]:
    return {
        tuple(sorted(sample.labels.values())): sample.value
        for family in metrics.events.collect()
        for sample in family.samples
        if sample.value
    }


def test_runs_cut_a_read_in_order_and_lose_no_line() -> None:
    lines = [bytes([65 + n % 26]) * (n % 50) for n in range(1000)]
    for count in (2, 3, 7):
        runs = split_runs(lines, count)
        assert len(runs) == count
        assert [line for run in runs for line in run] == lines


def test_a_burst_in_workers_keeps_what_one_thread_keeps(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    others = OTHER_TYPES.splitlines()
    mixed = {n: others[n % len(others)] for n in range(301, 8000, 997)}
    burst_file(log, 8000, {**mixed, **BAD_LINES})
    assert log.stat().st_size > 2 * BURST_BYTES
    alone, alone_metrics = read_whole_file(tmp_path / "one", log, workers=1)
    shared, shared_metrics = read_whole_file(tmp_path / "two", log, workers=2)

    assert alone.converter.bursts == 0
    assert shared.converter.bursts >= 2  # the reads were bursts, converted in two processes
    segments, checkpoints = spool_contents(tmp_path / "one")
    assert sum(len(str(types)) for types, *_ in segments) == 8000 - len(BAD_LINES)
    assert sum(str(types).count("v") for types, *_ in segments) >= 2
    assert sum(fields is not None for *_, fields in segments) >= 2
    assert checkpoints[-1][1] == log.stat().st_size
    assert spool_contents(tmp_path / "two") == (segments, checkpoints)
    assert rejected_entries(tmp_path / "two") == rejected_entries(tmp_path / "one")
    assert len(rejected_entries(tmp_path / "one")) == len(BAD_LINES) - 1  # a blank line
    assert events_counted(shared_metrics) == events_counted(alone_metrics)


def append_hits(path: Path, start: int, stop: int) -> None:
    with path.open("ab") as out:
        out.write(b"".join(hit_line(n) + b"\n" for n in range(start, stop)))


def test_a_dead_worker_is_counted_and_its_burst_converted_in_the_thread(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    append_hits(log, 0, 3000)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.declare_source("waf", tails_files=True)
    spool = Spool(state / "spool.db", metrics)
    spool.configure_webhooks({"soc": frozenset({"hit"})})
    processor = LineProcessor(
        "waf", load_format("native"), MappingContext(), metrics, RejectedLog(state, "waf")
    )
    config = FileSourceConfig(name="waf", paths=(str(log),), workers=2)
    source = FileSource(config, spool, processor, metrics)
    source._open_initial()

    def failures() -> float | None:
        return registry.get_sample_value(
            "tailhook_pipeline_worker_failures_total", {"source": "waf"}
        )

    try:
        assert source._read_all()  # one read of 1 MiB: a burst, in two processes
        assert source.converter.bursts == 1
        assert failures() == 0
        workers = source.converter.worker_pids()
        assert workers
        for pid in workers:  # the pool's own processes, started by this test
            os.kill(pid, signal.SIGKILL)
        append_hits(log, 3000, 9000)
        assert source._read_all()  # the next burst finds the pool broken
        assert failures() == 1
        assert source.converter.bursts == 1  # ... and was converted in the thread
        assert source._read_all()  # so is the next, within a minute of the failure
        assert source.converter.bursts == 1
        assert not source.converter.worker_pids()
        source.converter.retry_seconds = 0.0  # the minute has passed
        for _ in range(100):  # the next bursts: a new pool takes them
            if not source._read_all():
                break
        assert source.converter.bursts > 1
        assert failures() == 1
        assert spool.backlog("soc") == 9000
    finally:
        source.teardown()  # closes its files and its workers
        spool.close()


def test_small_reads_never_start_workers(tmp_path: Path) -> None:
    """The steady state (a file growing a few lines at a time) pays nothing for them."""
    log = tmp_path / "detections.log"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    metrics = Metrics(CollectorRegistry())
    spool = Spool(state / "spool.db", metrics)
    spool.configure_webhooks({"soc": frozenset({"hit"})})
    processor = LineProcessor(
        "waf", load_format("native"), MappingContext(), metrics, RejectedLog(state, "waf")
    )
    config = FileSourceConfig(name="waf", paths=(str(log),), workers=4)
    append_hits(log, 0, 10)
    source = FileSource(config, spool, processor, metrics)
    source._open_initial()
    try:
        for start in range(10, 500, 70):
            assert source._read_all()
            append_hits(log, start, start + 70)
        assert source._read_all()
        assert spool.backlog("soc") == 500
        assert source.converter.bursts == 0
        assert not source.converter.worker_pids()
    finally:
        source.teardown()  # closes its files and its workers
        spool.close()


def running(pid: int) -> bool:
    try:
        state = stat_fields(pid)[0]
    except OSError:
        return False
    return state != "Z"


def stored_hit_numbers(state: Path) -> list[int]:
    db = sqlite3.connect(state / "spool.db")
    try:
        bodies = [bytes(row[0]) for row in db.execute("SELECT body FROM segments ORDER BY seq")]
    finally:
        db.close()
    numbers = []
    for body in bodies:
        for event in body.split(b"\n"):
            numbers.append(int(orjson.loads(event)["id"][0].removeprefix("hit-")))
    return numbers


@pytest.mark.slow
def test_a_sigkill_mid_burst_loses_and_doubles_nothing_in_the_spool(
    tmp_path: Path, closed_port: int
) -> None:
    """The webhook is down, so the spool keeps every event it was given: after a kill in
    the middle of a burst and a restart, each line is in it exactly once, in order."""
    count = 40000
    log = tmp_path / "detections.log"
    append_hits(log, 0, count)
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    url = f"http://127.0.0.1:{closed_port}/hook"
    config.write_text(file_source_yaml(state, url, [str(log)], workers="2"))
    agent_log = tmp_path / "agent.log"
    with AgentProcess(config, agent_log) as agent:
        lines = lambda: agent.metric("tailhook_source_lines_total", source="waf") or 0  # noqa: E731
        assert wait_until(lambda: lines() > 0, 60)
        workers = descendants(agent.pid)
        read = lines()
        agent.kill()
    assert 0 < read < count  # killed in the middle of the burst
    assert len(workers) >= 2  # the fork server and a worker
    left = lambda: [Path(f"/proc/{p}/cmdline").read_bytes() for p in workers if running(p)]  # noqa: E731
    assert wait_until(lambda: not left(), 10), left()
    with AgentProcess(config, agent_log) as agent:
        assert wait_until(
            lambda: (
                (agent.metric("tailhook_source_bytes_total", source="waf") or 0) > 0
                and agent.metric("tailhook_file_lag_bytes", source="waf") == 0
            ),
            60,
        )
        assert agent.terminate() == 0
    assert stored_hit_numbers(state) == list(range(count))
