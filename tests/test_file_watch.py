"""A directory a file source watches alone is watched through watchdog's shared inotify
reader directly (``agent.sources.file._DirectWatch``): an append or a new file wakes the
source at once, with no observer thread between; a ``**`` glob's tree still goes
through an observer; a directory removed and made again is watched again.

The periodic rescan is made 30 s long, so a line read within seconds was read because
inotify woke the source, not because a rescan came round.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import FileSourceConfig
from agent.formats import MappingContext, load_format
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
from agent.sources import file as file_module
from agent.sources.file import FileSource
from agent.spool import Spool
from agent.telemetry import Metrics
from tests.agent_support import hit_line, wait_until

#: Much longer than any wait below: only inotify can wake the source in time.
LONG_RESCAN = 30.0
#: How long an inotify wake may take on a busy machine.
WAKE = 10.0


class Running:
    """A file source tailing ``globs`` in its own thread, into a spool of its own."""

    def __init__(self, state: Path, *globs: str) -> None:
        state.mkdir(mode=0o700)
        self.metrics = Metrics(CollectorRegistry())
        self.spool = Spool(state / "spool.db", self.metrics)
        self.spool.configure_webhooks({"soc": frozenset({"hit"})})
        processor = LineProcessor(
            "waf", load_format("native"), MappingContext(), self.metrics, RejectedLog(state, "waf")
        )
        config = FileSourceConfig(name="waf", paths=globs)
        self.source = FileSource(config, self.spool, processor, self.metrics, state)

    def __enter__(self) -> Running:
        self.source.start()
        assert wait_until(self.source.started.is_set, WAKE)
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.stop()
        self.source.join(10)
        assert not self.source.is_alive()
        self.spool.close()

    def backlog(self) -> int:
        return self.spool.backlog("soc")


@pytest.fixture
def long_rescan(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(file_module, "RESCAN_SECONDS", LONG_RESCAN)
    yield


def append(path: Path, *numbers: int) -> None:
    with path.open("ab") as out:
        out.write(b"".join(hit_line(n) + b"\n" for n in numbers))


def test_an_append_and_a_new_file_wake_the_source_at_once(
    tmp_path: Path, long_rescan: None
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "a.log", 0)
    running = Running(tmp_path / "state", str(logs / "*.log"))
    source = running.source
    scans: list[float] = []
    scan = source._scan

    def counted_scan() -> None:
        scans.append(time.monotonic())
        scan()

    source._scan = counted_scan  # type: ignore[method-assign]
    with running:
        assert wait_until(lambda: running.backlog() == 1, WAKE)
        assert list(source._direct) == [str(logs)]
        observer = source._observer
        assert observer is not None and not observer.emitters  # no emitter thread
        started, scanned = time.monotonic(), len(scans)
        for n in range(1, 6):  # each opens, writes and closes the file: no rescan
            append(logs / "a.log", n)
            assert wait_until(lambda n=n: running.backlog() == n + 1, WAKE)
        assert len(scans) == scanned
        append(logs / "b.log", 6)  # a new file: the callback asks for a rescan
        assert wait_until(lambda: running.backlog() == 7, WAKE)
        assert len(scans) > scanned
        assert time.monotonic() - started < LONG_RESCAN / 2


def test_a_glob_over_a_tree_is_still_watched_by_an_observer(
    tmp_path: Path, long_rescan: None
) -> None:
    logs = tmp_path / "logs"
    (logs / "node1").mkdir(parents=True)
    append(logs / "node1" / "a.log", 0)
    with Running(tmp_path / "state", str(logs / "**" / "*.log")) as running:
        source = running.source
        assert wait_until(lambda: running.backlog() == 1, WAKE)
        assert not source._direct
        observer = source._observer
        assert observer is not None and len(observer.emitters) == 1
        append(logs / "node1" / "a.log", 1)
        assert wait_until(lambda: running.backlog() == 2, WAKE)


@pytest.mark.parametrize("gone", ["removed", "moved away"])
def test_a_directory_made_again_is_watched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gone: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "a.log", 0)
    with Running(tmp_path / "state", str(logs / "*.log")) as running:
        source = running.source
        assert wait_until(lambda: running.backlog() == 1, WAKE)
        if gone == "removed":
            shutil.rmtree(logs)  # the watch goes with it
        else:
            logs.rename(tmp_path / "logs.old")  # the watch follows the directory
        # The source forgets the watch at the rescan the event asks for.
        assert wait_until(lambda: str(logs) not in source._direct, WAKE)
        logs.mkdir()
        append(logs / "a.log", 1)
        # Nothing watches the parent: the periodic rescan finds the directory again.
        rescans = 2 * file_module.RESCAN_SECONDS + WAKE
        assert wait_until(lambda: str(logs) in source._direct, rescans)
        assert wait_until(lambda: running.backlog() == 2, WAKE)
        short = file_module.RESCAN_SECONDS
        monkeypatch.setattr(file_module, "RESCAN_SECONDS", LONG_RESCAN)
        time.sleep(2 * short)  # the loop's last short wait ends; the next is 30 s long
        append(logs / "a.log", 2)
        assert wait_until(lambda: running.backlog() == 3, WAKE)  # inotify, on the new watch


def test_two_globs_over_one_directory_watch_it_without_a_warning(
    tmp_path: Path, long_rescan: None
) -> None:
    """``logs/*.log`` and ``logs/../logs/*.txt`` are one inotify watch: each glob's
    callback has an id of its own, so none overwrites another, and none is missing
    when they are removed (watchdog warns of both), here or with another source on the
    same directory."""
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "a.log", 0)
    append(logs / "a.txt", 1)
    both = Running(tmp_path / "state", str(logs / "*.log"), str(logs / ".." / "logs" / "*.txt"))
    other = Running(tmp_path / "other", str(logs / "*.log"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with both, other:
            assert wait_until(lambda: both.backlog() == 2 and other.backlog() == 1, WAKE)
            assert len(both.source._direct) == 2
            append(logs / "a.txt", 2)
            append(logs / "a.log", 3)
            assert wait_until(lambda: both.backlog() == 4 and other.backlog() == 2, WAKE)
    assert [str(warning.message) for warning in caught] == []
