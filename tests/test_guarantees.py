"""The guarantees everything else rests on, each with a real fault that breaks it.

- A file offset commits only together with the events read up to it. The faults are real
  SQLite ones: a trigger, planted in the agent's own ``spool.db``, refuses every new
  checkpoint (or every new segment). Committed apart, a refused checkpoint leaves its
  segment behind, and the lines are kept twice when they are read again; a refused
  segment leaves its checkpoint behind, and after a crash its lines are skipped.
- A file truncated and written again past the read offset is noticed even when its first
  KiB did not change: the bytes just before the offset are compared too; and when nothing
  was committed yet (no bytes before the offset to compare), by its first bytes.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.agent_support import (
    caught_up,
    committed_offsets,
    file_config,
    hit_line,
    received_ids,
    running_agent,
    wait_bytes_read,
    wait_until,
)
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver


def lines(numbers: range) -> bytes:
    return b"".join(hit_line(n) + b"\n" for n in numbers)


def got(receiver: Receiver) -> Counter[str]:
    return Counter(received_ids(receiver.bodies_json()))


def plant_fault(state: Path, table: str) -> None:
    """Make every INSERT into ``table`` of the agent's spool fail, as a broken disk would."""
    with sqlite3.connect(state / "spool.db", timeout=30) as db:
        db.execute(
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )


def clear_fault(state: Path, table: str) -> None:
    with sqlite3.connect(state / "spool.db", timeout=30) as db:
        db.execute(f"DROP TRIGGER refuse_{table}")


def wait_for_failed_write(agent: AgentProcess, offset: int) -> bool:
    return wait_until(
        lambda: "The spool cannot be written" in agent.log_since(offset), 10, interval=0.05
    )


@pytest.mark.slow
def test_a_refused_checkpoint_keeps_nothing_of_its_read(tmp_path: Path, receiver: Receiver) -> None:
    """Offsets and events in one transaction: if the checkpoint cannot be written, the
    segment read with it is not kept either, so reading the lines again keeps them once."""
    log, state = tmp_path / "detections.log", tmp_path / "state"
    log.write_bytes(lines(range(5)))
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(state, receiver.url, [str(log)]))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert receiver.wait_for(lambda _: set(got(receiver)) == {f"hit-{n}" for n in range(5)})
        plant_fault(state, "checkpoints")
        offset = agent.log_path.stat().st_size
        with log.open("ab") as out:
            out.write(lines(range(5, 20)))
        # Refused at least once: committed apart, its segment would be kept already.
        assert wait_for_failed_write(agent, offset), agent.log_since(offset)
        clear_fault(state, "checkpoints")
        # Wait until the whole file is read and committed, and everything sent.
        size = log.stat().st_size
        assert wait_until(lambda: list(committed_offsets(state).values()) == [size], 15)
        assert wait_until(lambda: agent.metric("tailhook_webhook_backlog_events") == 0, 15)
        assert agent.terminate() == 0
    counts = got(receiver)
    assert [i for i, n in counts.items() if n > 1] == [], "kept twice: offset committed apart"


@pytest.mark.slow
def test_a_refused_segment_moves_no_offset_across_a_crash(
    tmp_path: Path, receiver: Receiver
) -> None:
    """If the events cannot be kept, the offset does not move: after a SIGKILL in the
    middle of the outage the lines are read again, not skipped."""
    log, state = tmp_path / "detections.log", tmp_path / "state"
    log.write_bytes(lines(range(5)))
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(state, receiver.url, [str(log)]))
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert receiver.wait_for(lambda _: set(got(receiver)) == {f"hit-{n}" for n in range(5)})
        plant_fault(state, "segments")
        offset = agent.log_path.stat().st_size
        with log.open("ab") as out:
            out.write(lines(range(5, 20)))
        assert wait_for_failed_write(agent, offset), agent.log_since(offset)
        agent.kill()
    clear_fault(state, "segments")
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        wanted = {f"hit-{n}" for n in range(20)}
        assert receiver.wait_for(lambda _: set(got(receiver)) >= wanted, timeout=15), (
            f"skipped: {sorted(wanted - set(got(receiver)))}"
        )
        assert agent.terminate() == 0


def long_hit(n: int, payload_bytes: int) -> bytes:
    """A hit line whose payload alone is longer than the file fingerprint (1 KiB)."""
    obj = orjson.loads(hit_line(n))
    obj["payloads"] = ["x" * payload_bytes]
    return orjson.dumps(obj)


def test_a_rewrite_past_the_offset_with_the_same_first_kib_is_read_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The file keeps its first KiB (a long first line) and never shrinks, yet everything
    after that line is new: only the bytes before the offset can tell."""
    log = tmp_path / "detections.log"
    first = long_hit(0, 1500) + b"\n"
    log.write_bytes(first + lines(range(1, 6)))
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config):
        assert receiver.wait_for(lambda _: set(got(receiver)) >= {f"hit-{n}" for n in range(6)})
        rewritten = first + lines(range(100, 120))
        assert len(rewritten) > log.stat().st_size
        fd = os.open(log, os.O_WRONLY)
        try:
            os.pwrite(fd, rewritten, 0)  # in place, one write: the file never shrinks
        finally:
            os.close(fd)
        wanted = {f"hit-{n}" for n in range(100, 120)}
        assert receiver.wait_for(lambda _: set(got(receiver)) >= wanted, timeout=10), (
            f"never read: {sorted(wanted - set(got(receiver)))}"
        )


def test_a_rewrite_before_the_first_line_ended_is_read_from_the_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The first line is still unfinished (the offset is 0: no bytes before it to compare)
    when the file is written again in place, longer: only its first bytes can tell that
    the 70 bytes held are not the start of what follows."""
    log = tmp_path / "detections.log"
    log.write_bytes(hit_line(0)[:70])
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config) as agent:
        assert wait_bytes_read(agent, 70)  # read and held
        rewritten = lines(range(100, 105))
        fd = os.open(log, os.O_WRONLY)
        try:
            os.pwrite(fd, rewritten, 0)  # in place, one write: the file never shrinks
        finally:
            os.close(fd)
        wanted = {f"hit-{n}" for n in range(100, 105)}
        assert receiver.wait_for(lambda _: set(got(receiver)) >= wanted, timeout=10), (
            f"never read: {sorted(wanted - set(got(receiver)))}"
        )
        assert wait_until(lambda: caught_up(agent, log), 5)
        torn = agent.registry.get_sample_value(
            "tailhook_events_total",
            {"source": "waf", "event_type": "unknown", "outcome": "invalid_json"},
        )
    assert sorted(got(receiver).elements()) == sorted(wanted)
    assert not torn
