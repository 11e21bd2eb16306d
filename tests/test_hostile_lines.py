"""Hostile input through the file source, per CONTRACT §4 "bad input": over-long lines
(up to 1 GiB, never held whole: the real process's peak RSS is measured), bytes that are
not UTF-8, NUL bytes, CRLF endings, byte-order marks, JSON that is not an object or not a
double, and the rejected-lines file kept under 10 MiB however much is rejected.

A rejected line is never delivered, is counted by reason, is written to
``state_dir/rejected/SOURCE.jsonl``, and never costs its neighbours.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.agent_support import (
    caught_up,
    file_config,
    hit_line,
    received_ids,
    running_agent,
    wait_bytes_read,
    wait_until,
)
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

MIB = 1024 * 1024
KIB = 1024
BOM = b"\xef\xbb\xbf"
REJECTED_MAX = 10 * MIB


def got(receiver: Receiver) -> list[str]:
    return received_ids(receiver.bodies_json())


def wait_for_ids(receiver: Receiver, wanted: list[str], timeout: float = 10.0) -> bool:
    return receiver.wait_for(
        lambda reqs: set(wanted) <= set(received_ids([r.json() for r in reqs])), timeout
    )


def outcomes(registry: CollectorRegistry) -> dict[str, float]:
    """``tailhook_events_total`` of source waf summed over event types, by outcome."""
    totals: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "tailhook_events_total" and sample.labels["source"] == "waf":
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0) + sample.value
    return {outcome: n for outcome, n in totals.items() if n}


def truncations(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("tailhook_file_truncations_total", {"source": "waf"}) or 0


def rejected_entries(state: Path) -> list[dict[str, object]]:
    path = state / "rejected" / "waf.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def padded(n: int, length: int) -> bytes:
    """A valid hit line padded with trailing spaces (still valid JSON) to ``length``."""
    line = hit_line(n)
    assert len(line) <= length
    return line + b" " * (length - len(line))


# --- each kind of bad line --------------------------------------------------------------

#: (line bytes without its "\n", the outcome it must get, or None if it is skipped silently)
BAD_LINES: list[tuple[bytes, str | None]] = [
    (b"\xff\xfe{}", "invalid_encoding"),
    (hit_line(900).replace(b"example.com", b"exa\xc3mple.com"), "invalid_encoding"),
    (hit_line(901).replace(b"example.com", b"exa\x00mple.com"), "invalid_encoding"),
    (b"\x00", "invalid_encoding"),
    (b'{"event":"hit","domain":"\xc0\xaf"}', "invalid_encoding"),  # overlong encoding
    (b'{"event":"hit","domain":"\xed\xa0\x80"}', "invalid_encoding"),  # a UTF-8 surrogate
    (b"not json", "invalid_json"),
    (b'{"event":"hit","time":1e400}', "invalid_json"),
    (b'{"event":"hit","time":NaN}', "invalid_json"),
    (b'{"event":"hit","time":Infinity}', "invalid_json"),
    (BOM + hit_line(902), "invalid_json"),  # a BOM is skipped only at the start of a file
    (b"[1,2]", "invalid_schema"),
    (b'"a string"', "invalid_schema"),
    (b'{"event":"nope"}', "unknown_event"),
    (b'{"event":1}', "unknown_event"),
    (b'{"no_event":true}', "unknown_event"),
    (b"", None),
    (b"   \t ", None),
    (b"\r", None),  # a blank CRLF line
]


def test_each_kind_of_bad_line_is_rejected_by_reason_and_costs_no_neighbour(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A file that starts with a BOM and has CRLF endings, with a valid line between
    every two bad ones: every valid line is delivered, in order; every bad one counted
    under its reason and written to the rejected file; blank lines only skipped."""
    log = tmp_path / "app.log"
    data = BOM + hit_line(0) + b"\r\n"
    for n, (bad, _) in enumerate(BAD_LINES, start=1):
        data += bad + b"\n" + hit_line(n) + (b"\r\n" if n % 2 else b"\n")
    log.write_bytes(data)
    valid = [f"hit-{n}" for n in range(len(BAD_LINES) + 1)]
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        assert wait_for_ids(receiver, valid)
        assert wait_until(lambda: caught_up(agent, log), 5)
        counted = outcomes(agent.registry)
    assert got(receiver) == valid
    expected: dict[str, float] = {"accepted": len(valid)}
    for _, outcome in BAD_LINES:
        if outcome is not None:
            expected[outcome] = expected.get(outcome, 0) + 1
    assert counted == expected
    entries = rejected_entries(tmp_path / "state")
    assert [e["reason"] for e in entries] == [o for _, o in BAD_LINES if o is not None]
    assert all(e["source"] == "waf" and e["detail"] for e in entries)
    # The rejected file shows the line; bytes that are not UTF-8 escaped, not dropped.
    assert entries[0]["line"] == "\\xff\\xfe{}" and entries[0]["length"] == 4


def test_a_bom_split_across_writes_and_after_a_copytruncate_is_skipped(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        with log.open("ab", buffering=0) as writer:
            for piece in (BOM[:1], BOM[1:2], BOM[2:] + hit_line(0)[:10]):
                writer.write(piece)
                assert wait_bytes_read(agent, log.stat().st_size)  # read on its own
            writer.write(hit_line(0)[10:] + b"\r\n" + hit_line(1) + b"\r\n")
            assert wait_for_ids(receiver, ["hit-0", "hit-1"])
            # copytruncate, and the writer starts the file again with a BOM once the
            # agent has seen the file shrink
            log.write_bytes(b"")
            assert wait_until(lambda: truncations(agent.registry) == 1, 5)
            writer.write(BOM + hit_line(2) + b"\r\n")
            assert wait_for_ids(receiver, ["hit-2"])
        assert wait_until(lambda: caught_up(agent, log), 5)
        counted = outcomes(agent.registry)
    assert got(receiver) == ["hit-0", "hit-1", "hit-2"]
    assert counted == {"accepted": 3}


def test_max_line_bytes_is_the_length_without_the_line_ending(
    tmp_path: Path, receiver: Receiver
) -> None:
    """max_line_bytes 2 KiB: a line of exactly 2048 bytes is kept, with LF or CRLF (the
    CR is part of the ending, which CONTRACT §4 drops); 2049 is line_too_long."""
    limit = 2 * KIB
    log = tmp_path / "app.log"
    log.write_bytes(
        padded(0, limit) + b"\n"
        + padded(1, limit) + b"\r\n"
        + padded(2, limit + 1) + b"\n"
        + hit_line(3) + b"\n"
    )  # fmt: skip
    config = file_config(tmp_path, receiver.url, (str(log),), max_line_bytes=limit)
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ["hit-0", "hit-3"])
        assert wait_until(lambda: caught_up(agent, log), 5)
        counted = outcomes(agent.registry)
    rejected = [(e["reason"], e["length"]) for e in rejected_entries(tmp_path / "state")]
    assert got(receiver) == ["hit-0", "hit-1", "hit-3"], f"rejected: {rejected}"
    assert counted == {"accepted": 3, "line_too_long": 1}
    assert rejected == [("line_too_long", limit + 1)]


def test_an_over_long_line_across_reads_and_a_restart_is_rejected_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A 4 MiB line (max 64 KiB) written in pieces, the agent stopped in its middle: it is
    rejected once, with its first KiB and its full length, and its neighbours delivered."""
    log = tmp_path / "app.log"
    log.write_bytes(hit_line(0) + b"\n" + b"{" + b"x" * (MIB - 1))
    config = file_config(tmp_path, receiver.url, (str(log),), max_line_bytes=64 * KIB)
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ["hit-0"])
        with log.open("ab") as out:
            for _ in range(2):  # each MiB read apart
                out.write(b"x" * MIB)
                out.flush()
                assert wait_bytes_read(agent, log.stat().st_size)
        # Read to the end, not yet finished: nothing rejected.
        assert "line_too_long" not in outcomes(agent.registry)
    with log.open("ab") as out:
        out.write(b"x" * MIB + b"\n" + hit_line(1) + b"\n")
    with running_agent(config) as agent:
        assert wait_for_ids(receiver, ["hit-0", "hit-1"])
        assert wait_until(lambda: caught_up(agent, log), 5)
        counted = outcomes(agent.registry)
    assert got(receiver) == ["hit-0", "hit-1"]
    assert counted == {"accepted": 1, "line_too_long": 1}
    [entry] = rejected_entries(tmp_path / "state")
    assert entry["reason"] == "line_too_long"
    assert entry["length"] == 4 * MIB
    assert entry["line"] == "{" + "x" * (KIB - 1)


# --- a 1 GiB line against the real process's memory ---------------------------------------


@pytest.mark.slow
def test_a_1_gib_line_is_skipped_without_growing_the_agents_memory(
    tmp_path: Path, receiver: Receiver
) -> None:
    size = 1024 * MIB
    if shutil.disk_usage(tmp_path).free < 3 * 1024 * MIB:
        size = 256 * MIB  # too little room for 1 GiB: still 256 times max_line_bytes
    log = tmp_path / "app.log"
    log.write_bytes(hit_line(0) + b"\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        file_source_yaml(tmp_path / "state", receiver.url, [str(log)], max_line_bytes="1MiB")
    )
    try:
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            assert wait_for_ids(receiver, ["hit-0"])
            before_kib = agent.status_kib("VmHWM")
            chunk = b"x" * MIB
            with log.open("ab") as out:
                for _ in range(size // MIB):
                    out.write(chunk)
                out.write(b"\n" + hit_line(1) + b"\n")
            assert wait_for_ids(receiver, ["hit-0", "hit-1"], timeout=90), "hit-1 not delivered"
            after_kib = agent.status_kib("VmHWM")
            too_long = agent.metric(
                "tailhook_events_total", source="waf", event_type="unknown", outcome="line_too_long"
            )
            assert agent.terminate() == 0
    finally:
        log.unlink(missing_ok=True)  # pytest keeps the last runs' tmp_path: no 1 GiB leftovers
    growth_mib = (after_kib - before_kib) / 1024
    print(
        f"{size // MIB} MiB line: VmHWM {before_kib} kB -> {after_kib} kB (+{growth_mib:.1f} MiB)"
    )
    assert growth_mib < 64
    assert too_long == 1
    assert got(receiver) == ["hit-0", "hit-1"]
    [entry] = rejected_entries(tmp_path / "state")
    assert entry["reason"] == "line_too_long"
    assert entry["length"] == size
    assert entry["line"] == "x" * KIB


# --- the rejected-lines file stays bounded -------------------------------------------------


def test_the_rejected_lines_file_is_rotated_once_and_stays_under_10_mib(
    tmp_path: Path, receiver: Receiver
) -> None:
    """24 000 rejected lines of 1000 bytes (about 27 MiB of rejected entries): the file
    is rotated to .1, the older .1 dropped, nothing else kept; every line still counted."""
    count = 24_000
    bad = b"{" + b"y" * 998 + b"\n"  # 1000 bytes of invalid JSON with its newline
    log = tmp_path / "app.log"
    log.write_bytes(hit_line(0) + b"\n" + bad * count + hit_line(1) + b"\n")
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        assert wait_for_ids(receiver, ["hit-0", "hit-1"], timeout=60)
        counted = outcomes(agent.registry)
    assert counted == {"accepted": 2, "invalid_json": count}
    rejected = tmp_path / "state" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == ["waf.jsonl", "waf.jsonl.1"]
    current, previous = rejected / "waf.jsonl", rejected / "waf.jsonl.1"
    assert current.stat().st_size <= REJECTED_MAX
    assert previous.stat().st_size <= REJECTED_MAX
    # The newest entries are kept: the last file ends with the last rejected line.
    last = json.loads(current.read_text().splitlines()[-1])
    assert last["reason"] == "invalid_json" and last["length"] == 999
    kept = len(current.read_text().splitlines()) + len(previous.read_text().splitlines())
    assert kept < count  # the oldest ones were dropped with the first .1
