"""Damaged and full state: the agent says what happened, does not crash-loop, resumes."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.receiver import Receiver


def delivered(receiver: Receiver) -> set[str]:
    return set(received_ids(receiver.bodies_json()))


def test_a_corrupt_spool_is_set_aside_and_the_agent_runs_on(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    config = file_config(tmp_path, receiver.url, (str(log),), start_at="end")
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool.db").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))  # torn garbage
    with caplog.at_level(logging.ERROR, logger="agent"), running_agent(config):
        # The damaged spool knew which files were read: they are all read again, even
        # with start_at: end (a duplicate is better than a loss).
        assert receiver.wait_for(lambda r: len(delivered(receiver)) >= 3, 10)
    assert delivered(receiver) == {"hit-0", "hit-1", "hit-2"}
    assert len(list(state.glob("spool.db.damaged-*"))) == 1
    assert any("spool was damaged" in record.getMessage() for record in caplog.records)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test (needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: close has nothing to flush
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_state_dir_makes_the_agent_unready_and_it_resumes_without_loss(
    tmp_path: Path, receiver: Receiver, small_tmpfs: Path
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(5)))
    config = file_config(tmp_path, receiver.url, (str(log),))
    config = type(config)(**{**config.__dict__, "state_dir": small_tmpfs / "state"})
    with running_agent(config) as agent:
        assert agent.server is not None
        readyz = f"http://127.0.0.1:{agent.server.port}/readyz"
        assert receiver.wait_for(lambda r: len(delivered(receiver)) >= 5, 10)
        assert requests.get(readyz, timeout=5).status_code == 200

        receiver.answer_with(503)  # nothing leaves, so the spool must grow
        filler = fill(small_tmpfs)
        with log.open("ab") as out:
            for n in range(5, 4005):
                out.write(hit_line(n) + b"\n")
        assert wait_until(lambda: requests.get(readyz, timeout=5).status_code == 503, 15)
        assert agent.healthy()[0]  # every loop still alive: no crash, no crash loop

        filler.unlink()
        receiver.answer_with(200)
        ok = wait_until(lambda: requests.get(readyz, timeout=5).status_code == 200, 15)
        assert ok, (
            requests.get(readyz, timeout=5).text,
            len(delivered(receiver)),
            agent.spool.writable if agent.spool else None,
        )
        everything = {f"hit-{n}" for n in range(4005)}
        assert wait_until(lambda: delivered(receiver) >= everything, 30)
    assert delivered(receiver) == everything
