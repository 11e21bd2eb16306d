"""The file source inside the real agent: appends, partial lines, globs, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_support import (
    caught_up,
    committed_offsets,
    file_config,
    file_key,
    hit_line,
    received_ids,
    running_agent,
    wait_bytes_read,
    wait_until,
)
from tests.support.receiver import Receiver


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_appended_lines_are_delivered_as_they_happen(
    tmp_path: Path, receiver: Receiver, watch: str
) -> None:
    log = tmp_path / "detections.log"
    log.touch()
    config = file_config(tmp_path, receiver.url, (str(log),), watch=watch)
    with running_agent(config):
        for n in range(5):
            append(log, hit_line(n) + b"\n")
            assert receiver.wait_for(
                lambda reqs, n=n: len(received_ids([r.json() for r in reqs])) >= n + 1, 5
            ), f"line {n} was not delivered"
    assert received_ids(receiver.bodies_json()) == [f"hit-{n}" for n in range(5)]


def test_a_line_written_in_pieces_is_joined(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    line = hit_line(1)
    log.write_bytes(b"")
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        append(log, line[:40])
        assert wait_bytes_read(agent, 40)  # read on its own
        append(log, line[40:100])
        assert wait_bytes_read(agent, 100)
        append(log, line[100:] + b"\r\n")
        assert receiver.wait_for(1, timeout=5)
    assert received_ids(receiver.bodies_json()) == ["hit-1"]


def test_start_at_end_skips_what_was_there_at_the_first_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(hit_line(0) + b"\n" + hit_line(1) + b"\n")
    config = file_config(tmp_path, receiver.url, (str(log),), start_at="end")
    with running_agent(config):
        append(log, hit_line(2) + b"\n")
        assert receiver.wait_for(1, timeout=5)
    assert received_ids(receiver.bodies_json()) == ["hit-2"]


def test_start_at_end_applies_only_once_not_at_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A file that appears while the agent is stopped (a rotation) is read from its start
    at the next start: ``start_at`` is for the very first one."""
    log = tmp_path / "detections.log"
    log.write_bytes(hit_line(0) + b"\n")
    config = file_config(tmp_path, receiver.url, (str(log),), start_at="end")
    with running_agent(config) as agent:
        append(log, hit_line(1) + b"\n")
        assert receiver.wait_for(1, timeout=5)
        assert wait_until(lambda: caught_up(agent, log), 5)
    log.rename(tmp_path / "detections.log.1")
    log.write_bytes(hit_line(2) + b"\n" + hit_line(3) + b"\n")
    with running_agent(config) as agent:
        assert receiver.wait_for(lambda reqs: len(received_ids([r.json() for r in reqs])) >= 3, 5)
        assert wait_until(lambda: caught_up(agent, log), 5)
    assert received_ids(receiver.bodies_json()) == ["hit-1", "hit-2", "hit-3"]


def test_a_clean_restart_continues_where_it_left_off(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config):
        assert receiver.wait_for(lambda reqs: len(received_ids([r.json() for r in reqs])) >= 3, 5)
    # Written while the agent is down, including a line still without its newline.
    append(log, hit_line(3) + b"\n" + hit_line(4)[:50])
    with running_agent(config) as agent:
        append(log, hit_line(4)[50:] + b"\n")
        assert receiver.wait_for(lambda reqs: len(received_ids([r.json() for r in reqs])) >= 5, 5)
        # All read and committed, nothing left to send: nothing more can arrive.
        assert wait_until(lambda: caught_up(agent, log), 5)
    assert received_ids(receiver.bodies_json()) == [f"hit-{n}" for n in range(5)]


def test_a_new_file_matching_the_glob_is_picked_up(tmp_path: Path, receiver: Receiver) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = file_config(tmp_path, receiver.url, (str(logs / "detections*.log"),))
    with running_agent(config) as agent:
        (logs / "other.log").write_bytes(hit_line(8) + b"\n")  # first: seen by any later scan
        (logs / "detections-2.log").write_bytes(hit_line(7) + b"\n")
        assert receiver.wait_for(1, timeout=5)
        assert wait_until(lambda: caught_up(agent, logs / "detections-2.log"), 5)
        # The scan that found detections-2.log saw other.log too, and left it alone.
        assert list(committed_offsets(config.state_dir)) == [file_key(logs / "detections-2.log")]
        assert agent.registry.get_sample_value("tailhook_source_files", {"source": "waf"}) == 1
    assert received_ids(receiver.bodies_json()) == ["hit-7"]


def test_bad_lines_are_rejected_counted_and_kept_aside(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(
        hit_line(1)
        + b"\n"
        + b"not json\n"
        + b"\n"
        + b'{"event":"nope"}\n'
        + b"\xff\xfe\n"
        + b'{"event":"hit"}\n'
        + hit_line(2)
        + b"\n"
    )
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config) as agent:
        assert receiver.wait_for(lambda reqs: len(received_ids([r.json() for r in reqs])) >= 2, 5)
        value = agent.registry.get_sample_value
        labels = {"source": "waf"}
        assert (
            value("tailhook_events_total", {**labels, "event_type": "hit", "outcome": "accepted"})
            == 2
        )
        assert (
            value(
                "tailhook_events_total",
                {**labels, "event_type": "unknown", "outcome": "invalid_json"},
            )
            == 1
        )
        assert (
            value(
                "tailhook_events_total",
                {**labels, "event_type": "unknown", "outcome": "unknown_event"},
            )
            == 1
        )
        assert (
            value(
                "tailhook_events_total",
                {**labels, "event_type": "unknown", "outcome": "invalid_encoding"},
            )
            == 1
        )
        assert (
            value(
                "tailhook_events_total",
                {**labels, "event_type": "hit", "outcome": "invalid_schema"},
            )
            == 1
        )
        assert value("tailhook_source_lines_total", labels) == 7
    assert received_ids(receiver.bodies_json()) == ["hit-1", "hit-2"]
    rejected = (tmp_path / "state" / "rejected" / "waf.jsonl").read_text().splitlines()
    assert len(rejected) == 4
