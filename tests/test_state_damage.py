"""Damaged and full state: the agent says what happened, does not crash-loop, resumes."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from agent.config import Config, SpoolConfig
from agent.service import Agent
from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.receiver import Receiver, RecordedRequest, Response

MIB = 1024 * 1024


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


class Tmpfs:
    """Mounts tmpfs file systems for a test and unmounts them at its end (needs root:
    skipped without it, but under CI, which runs as root, a failure)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def mount(self, size: str) -> Path:
        if os.geteuid() != 0:
            self._cannot("needs root to mount a tmpfs")
        mount = self.base / f"tmpfs-{len(self.mounted)}"
        mount.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            self._cannot(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.mounted.append(mount)
        return mount

    @staticmethod
    def _cannot(why: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)

    def unmount_all(self) -> None:
        for mount in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    mounts = Tmpfs(tmp_path)
    try:
        yield mounts
    finally:
        mounts.unmount_all()


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: close has nothing to flush
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


class Gate:
    """A receiver script: 200 while open, 503 while closed. Keeps what it accepted."""

    def __init__(self, open_: bool) -> None:
        self.open = open_
        self._lock = threading.Lock()
        self.accepted: list[RecordedRequest] = []

    def __call__(self, request: RecordedRequest, n: int) -> Response:
        if not self.open:
            return Response(503)
        with self._lock:
            self.accepted.append(request)
        return Response(200)

    def ids(self) -> set[str]:
        with self._lock:
            return set(received_ids([request.json() for request in self.accepted]))

    def times_each_batch_was_accepted(self) -> Counter[str]:
        with self._lock:
            return Counter(request.headers["webhook-id"] for request in self.accepted)


def on(state_dir: Path, config: Config, max_bytes: int, when_full: str = "block") -> Config:
    return replace(config, state_dir=state_dir, spool=SpoolConfig(max_bytes, when_full))


def append_lines(log: Path, numbers: range) -> None:
    with log.open("ab") as out:
        out.write(b"".join(hit_line(n) + b"\n" for n in numbers))


def readiness(agent: Agent) -> int:
    assert agent.server is not None
    return requests.get(f"http://127.0.0.1:{agent.server.port}/readyz", timeout=5).status_code


def test_a_full_disk_pauses_reading_and_both_resume_once_space_returns(
    tmp_path: Path, receiver: Receiver, tmpfs: Tmpfs
) -> None:
    disk = tmpfs.mount("5m")
    log = tmp_path / "detections.log"
    append_lines(log, range(5))
    gate = Gate(open_=True)
    receiver.answer_with(gate)
    config = on(disk / "state", file_config(tmp_path, receiver.url, (str(log),)), 3 * MIB)
    with running_agent(config) as agent:
        assert wait_until(lambda: len(gate.ids()) == 5, 10)
        assert readiness(agent) == 200
        filler = fill(disk)
        append_lines(log, range(5, 4005))  # ~2.8 MB to keep: more than is free
        assert wait_until(lambda: readiness(agent) == 503, 15)
        assert agent.healthy()[0]  # every loop still alive: no crash, no crash loop
        filler.unlink()
        assert wait_until(lambda: readiness(agent) == 200, 15)
        everything = {f"hit-{n}" for n in range(4005)}
        assert wait_until(lambda: gate.ids() >= everything, 30)
    assert gate.ids() == everything
    assert set(gate.times_each_batch_was_accepted().values()) == {1}


def test_a_backlog_is_delivered_while_the_disk_stays_full_each_batch_once(
    tmp_path: Path, receiver: Receiver, tmpfs: Tmpfs
) -> None:
    disk = tmpfs.mount("5m")
    log = tmp_path / "detections.log"
    gate = Gate(open_=False)  # the receiver is down while a backlog builds
    receiver.answer_with(gate)
    config = on(disk / "state", file_config(tmp_path, receiver.url, (str(log),)), 3 * MIB)
    with running_agent(config) as agent:
        assert agent.spool is not None
        append_lines(log, range(1500))
        assert wait_until(lambda: read_to(agent, log.stat().st_size), 10)
        filler = fill(disk)
        append_lines(log, range(1500, 2500))  # the spool needs room it cannot get
        assert wait_until(lambda: readiness(agent) == 503, 15)
        gate.open = True
        backlog = {f"hit-{n}" for n in range(1500)}
        assert wait_until(lambda: gate.ids() >= backlog, 30), len(gate.ids())
        assert wait_until(lambda: agent.spool is not None and agent.spool.backlog("soc") == 0, 10)
        assert filler.exists() and readiness(agent) == 503  # still full: reading waits
        assert set(gate.times_each_batch_was_accepted().values()) == {1}
        filler.unlink()
        assert wait_until(lambda: readiness(agent) == 200, 15)
        everything = {f"hit-{n}" for n in range(2500)}
        assert wait_until(lambda: gate.ids() >= everything, 30)
    assert set(gate.times_each_batch_was_accepted().values()) == {1}


def read_to(agent: Agent, offset: int) -> bool:
    assert agent.spool is not None
    return [c.offset for c in agent.spool.checkpoints("waf").values() if c.path] == [offset]


@pytest.mark.slow
@pytest.mark.parametrize("when_full", ["block", "drop_oldest"])
def test_the_spool_files_never_outgrow_max_bytes(
    tmp_path: Path, closed_port: int, when_full: str
) -> None:
    max_bytes = 2 * MIB
    log = tmp_path / "detections.log"
    log.touch()
    url = f"http://127.0.0.1:{closed_port}/hook"  # a dead receiver: nothing leaves
    config = on(tmp_path / "state", file_config(tmp_path, url, (str(log),)), max_bytes, when_full)
    largest = 0
    with running_agent(config) as agent:
        assert agent.spool is not None
        deadline = time.monotonic() + 6
        n = 0
        while time.monotonic() < deadline:
            append_lines(log, range(n, n + 50))
            n += 50
            largest = max(largest, bytes_on_disk(agent.spool.path))
            time.sleep(0.005)
        agent.spool.update_gauges()
        ratio = agent.registry.get_sample_value("tailhook_spool_capacity_ratio")
        dropped = agent.registry.get_sample_value("tailhook_spool_dropped_events_total")
        held = agent.spool.held_bytes
        offset = max(c.offset for c in agent.spool.checkpoints("waf").values() if c.path)
    print(f"{when_full}: largest {largest} of {max_bytes}, ratio {ratio}, held {held}")
    assert largest <= max_bytes
    assert ratio is not None and 0.5 < ratio <= 1
    if when_full == "block":  # it filled up and stopped reading
        assert dropped == 0 and offset < log.stat().st_size / 2
    else:  # it filled up and kept reading, dropping the oldest
        assert dropped is not None and dropped > 1000


def bytes_on_disk(spool_db: Path) -> int:
    total = 0
    for name in ("spool.db", "spool.db-wal", "spool.db-shm", "spool.reserve"):
        try:
            info = (spool_db.parent / name).stat()
        except FileNotFoundError:
            continue
        total += max(info.st_size, info.st_blocks * 512)
    return total


@pytest.mark.slow
def test_a_spool_that_filled_the_disk_itself_gives_the_space_back(
    tmp_path: Path, receiver: Receiver, tmpfs: Tmpfs
) -> None:
    disk = tmpfs.mount("10m")  # smaller than spool.max_bytes
    log = tmp_path / "detections.log"
    gate = Gate(open_=False)
    receiver.answer_with(gate)
    config = on(disk / "state", file_config(tmp_path, receiver.url, (str(log),)), 64 * MIB)
    with running_agent(config) as agent:
        assert readiness(agent) == 200
        append_lines(log, range(20_000))  # ~14 MB to keep
        assert wait_until(lambda: readiness(agent) == 503, 30)
        gate.open = True
        assert wait_until(lambda: readiness(agent) == 200, 30)
        append_lines(log, range(20_000, 20_010))
        everything = {f"hit-{n}" for n in range(20_010)}
        assert wait_until(lambda: gate.ids() >= everything, 60), len(gate.ids())
    assert set(gate.times_each_batch_was_accepted().values()) == {1}


def test_a_spool_that_cannot_be_read_makes_the_agent_unready_until_it_can(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    append_lines(log, range(3))
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        assert receiver.wait_for(lambda r: len(delivered(receiver)) >= 3, 10)
        assert readiness(agent) == 200
        other = sqlite3.connect(agent.config.state_dir / "spool.db")
        other.execute("ALTER TABLE batches RENAME TO hidden")
        other.commit()
        assert wait_until(lambda: readiness(agent) == 503, 10)
        other.execute("ALTER TABLE hidden RENAME TO batches")
        other.commit()
        other.close()
        assert wait_until(lambda: readiness(agent) == 200, 10)
        append_lines(log, range(3, 6))
        assert receiver.wait_for(lambda r: len(delivered(receiver)) >= 6, 10)
    assert delivered(receiver) == {f"hit-{n}" for n in range(6)}
