"""A model-based test of the file tailer: Hypothesis drives a real ``FileSource`` over real
files through random appends, half-written lines, rename rotations, copytruncates,
deletions, recreations, clock jumps and agent restarts and crashes, and checks what came
out of the real spool against a model of what had to come out, and what was allowed to.

How it is driven. The source's thread is not started: the state machine calls the steps
the thread's loop is made of, synchronously, so every interleaving Hypothesis picks is
one the thread could produce at step granularity, and a failing example replays exactly
(writes racing *inside* a scan or a read are not explored):

- ``start``: a new ``FileSource`` over a new ``Spool`` object on the same ``state_dir``
  (a process restart), then ``_open_initial()``;
- ``tick``: ``_scan()`` then ``_read_all()``: a loop turn with a rescan (the 1 s timer,
  or a created/moved/deleted event);
- ``read``: ``_read_all()`` alone: a turn woken by a modify event, without a rescan;
- ``stop``: its descriptors closed and the object dropped, as the loop's ``finally``
  does; ``crash=True`` also drops the spool without closing it. Offsets are committed in
  the transaction that keeps the events they cover, so a crash has nothing else to lose.

The watchdog observer is replaced by an object whose ``schedule`` does nothing (watching
only wakes the loop, which the machine drives itself). The clock is fake: the module's
``time`` and ``TailedFile`` (whose ``last_growth`` default was bound to the real
``time.monotonic`` at import) are patched for the run, and only ``advance`` moves it. No
webhook sink runs: the spool is drained with ``next_batch``/``finish_batch`` and the
batch bodies are parsed.

The application writes through one O_APPEND descriptor (``append``, ``write_partial``,
``complete_partial``) until it reopens app.log (``reopen_writer``), as nginx does on
logrotate's signal; reopening right after the last descriptor of a deleted app.log closed
gets the same inode back on ext4, which exercises the fingerprint check of a restart. The
glob is ``app*.log``: rotated and copied files (``app.log.N``) never match it.

What the model expects. Every line written whole (with its newline) is delivered exactly
once, whole (the notification carries the fields of the line with its id), the lines of
one file in the order written; except:

- ``skip``, must not be delivered: with ``start_at: end``, the complete lines in app.log
  at the very first start;
- ``risk``, may be lost (never duplicated):
  * the copytruncate window: lines of app.log past the agent's last commit when it is
    copied and truncated (they are only in the copy, which nothing reads), and a
    half-written line torn by the truncate (its head went to the copy);
  * lines of a file that no longer matches the glob and that the agent no longer holds,
    so nothing can read them again: the unread tail of a file rotated away or deleted
    while the agent was stopped, or held when it stopped (at a restart only matching
    files are opened; their checkpoints are forgotten), or before any scan had seen it;
    and lines appended to a rotated or deleted file after the agent released it.

Which files the agent holds is checked after every start and scan: app.log as soon as a
start or scan has seen it; a file let go only when it no longer matches, has been read to
its end and has not been written to for ``rotate_wait`` (sooner could lose lines); and,
at the end, after ``rotate_wait`` has passed, nothing but app.log (a descriptor leak).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)
from prometheus_client import CollectorRegistry

import agent.sources.file as file_module
from agent.config import FileSourceConfig
from agent.formats import MappingContext, load_format
from agent.pipeline import LineProcessor
from agent.pipeline.rejected import RejectedLog
from agent.sources.file import FileSource
from agent.spool import Spool
from agent.telemetry import Metrics
from tests.agent_support import ALL, hit_line

WEBHOOK = "soc"
SOURCE = "waf"
LIVE = "app.log"
GLOB = "app*.log"  # app.log, never app.log.N
#: Where a half line is cut: around the 64-byte fingerprint, and just before its newline.
CUTS = (1, 30, 63, 64, 65, 200, -1)

BASE_TIME = 1591261367  # hit_line(n)'s time is this + n

MUST, RISK, SKIP = "must", "risk", "skip"


class FakeClock:
    """The file source's ``time.monotonic``, moved only by the ``advance`` rule."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class NoObserver:
    """Stands in for the watchdog observer: watching only wakes the loop."""

    def schedule(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass(eq=False)
class ModelFile:
    """One real file (inode) and what the agent is expected to know of it."""

    label: str  # "F0", "F1", ... in creation order, for messages
    key: str  # "DEV:INODE", as the agent names it
    name: str | None  # its name in the directory now; None once deleted
    size: int = 0
    complete_end: int = 0  # offset after its last newline
    lines: list[tuple[int | None, int]] = field(default_factory=list)  # (id, end); None: torn
    tracked: bool = False  # the agent holds it open
    read_pos: int = 0  # bytes the agent has consumed (expected)
    committed: int = 0  # offset of its checkpoint in the spool (expected)
    last_write: float = 0.0  # when the writer last appended to it
    abandoned: bool = False  # no longer held nor matched: nothing will read it again


@dataclass
class Partial:
    """A line whose head is written and whose tail and newline are not yet."""

    n: int
    cut: int
    file: ModelFile
    torn: bool = False  # its file was copytruncated in between: the head is in the copy


class TailerModel(RuleBasedStateMachine):
    """The application, logrotate and the agent, against the model (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="tailer-model-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.state_dir = self.tmp / "state"
        self.state_dir.mkdir()
        self.clock = FakeClock()

        @dataclass
        class ClockedTailedFile(file_module.TailedFile):
            last_growth: float = field(default_factory=self.clock.monotonic)

        names = vars(file_module)
        self._patched = {name: names[name] for name in ("time", "TailedFile")}
        names["time"] = SimpleNamespace(monotonic=self.clock.monotonic)
        names["TailedFile"] = ClockedTailedFile
        self.metrics = Metrics(CollectorRegistry())
        self.config: FileSourceConfig | None = None
        self.spool: Spool | None = None
        self.dropped_spools: list[Spool] = []
        self.source: FileSource | None = None
        self.started_once = False
        self.files: list[ModelFile] = []
        self.writer: ModelFile | None = None
        self.writer_fd: int | None = None
        self.partial: Partial | None = None
        self.next_n = 0
        self.rotations = 0
        self.status: dict[int, str] = {}
        self.file_of: dict[int, ModelFile] = {}
        self.delivered: list[int] = []
        self.same_start = False

    # -- setup ------------------------------------------------------------------------

    @initialize(
        start_at=st.sampled_from(["beginning", "end"]),
        rotate_wait=st.sampled_from([0.0, 2.0, 5.0]),
        prefill=st.integers(0, 2),
        prefill_cut=st.none() | st.sampled_from(CUTS),
        same_start=st.booleans(),
    )
    def configure(
        self,
        start_at: str,
        rotate_wait: float,
        prefill: int,
        prefill_cut: int | None,
        same_start: bool,
    ) -> None:
        """app.log with a few lines (and maybe half a line) before the first start.

        ``same_start``: every line begins with the same 64 bytes and more (the hits share
        their ``time`` and ``logged_at``), as real lines often do: ModSecurity's audit
        lines from one client on one day all begin ``{"transaction":{"client_ip":
        "127.0.0.1","time_stamp":"Sat Nov 28`` (shared/samples/modsecurity), native lines
        logged in the same second share ``{"event":"hit","time":...,"logged_at":...,
        "ids":["``. The fingerprint of a file's first bytes cannot tell such files
        apart."""
        self.same_start = same_start
        self.config = FileSourceConfig(
            name=SOURCE,
            paths=(str(self.logs / GLOB),),
            start_at=start_at,
            rotate_wait=rotate_wait,
            watch="poll",
        )
        self._open_writer()
        self._append_lines(prefill)
        if prefill_cut is not None:
            self._write_partial(prefill_cut)
        self._start_agent()

    # -- the application --------------------------------------------------------------

    @precondition(lambda self: self.writer is not None)
    @rule(k=st.integers(1, 3))
    def append(self, k: int) -> None:
        """The writer finishes its half line, if any, then writes k lines."""
        if self.partial is not None:
            self._complete_partial()
        self._append_lines(k)

    @precondition(lambda self: self.writer is not None and self.partial is None)
    @rule(cut=st.sampled_from(CUTS))
    def write_partial(self, cut: int) -> None:
        self._write_partial(cut)

    @precondition(lambda self: self.partial is not None)
    @rule()
    def complete_partial(self) -> None:
        self._complete_partial()

    @precondition(lambda self: self.writer is not None)
    @rule()
    def reopen_writer(self) -> None:
        """The application reopens app.log (creating it if missing), after finishing its
        half line through the old descriptor."""
        if self.partial is not None:
            self._complete_partial()
        self._open_writer()

    @precondition(lambda self: self._live() is not None)
    @rule(create=st.booleans())
    def rotate_rename(self, create: bool) -> None:
        """``mv app.log app.log.N`` (and logrotate's ``create``: a new empty app.log)."""
        live = self._live()
        assert live is not None
        name = self._rotated_name()
        os.rename(self.logs / LIVE, self.logs / name)
        live.name = name
        if not live.tracked:
            self._abandon(live)
        if create:
            self._create_live()

    @precondition(lambda self: self._live() is not None)
    @rule(then_write=st.integers(0, 3))
    def copytruncate(self, then_write: int) -> None:
        """``cp app.log app.log.N; truncate -s0 app.log``: the writer's O_APPEND
        descriptor goes on writing at the new end, at once (``then_write`` lines, after the
        tail of its half line if it had one) or later."""
        live = self._live()
        assert live is not None
        shutil.copyfile(self.logs / LIVE, self.logs / self._rotated_name())
        os.truncate(self.logs / LIVE, 0)
        for n, end in live.lines:
            if n is not None and end > live.committed:
                self._at_risk(n)  # only in the copy
        if self.partial is not None and self.partial.file is live:
            self.partial.torn = True
            self._at_risk(self.partial.n)
        live.size = live.complete_end = 0
        live.lines = []
        live.read_pos = live.committed = 0  # the agent is to start it over
        if then_write and self.writer is not None:
            if self.partial is not None:
                self._complete_partial()
            self._append_lines(then_write)

    @precondition(lambda self: self._live() is not None)
    @rule()
    def delete_live(self) -> None:
        live = self._live()
        assert live is not None
        os.unlink(self.logs / LIVE)
        live.name = None
        if not live.tracked:
            self._abandon(live)

    @precondition(lambda self: self._live() is None)
    @rule()
    def create_live(self) -> None:
        """A new, empty app.log that the writer has not opened (yet)."""
        self._create_live()

    # -- the agent --------------------------------------------------------------------

    @precondition(lambda self: self.source is not None)
    @rule()
    def tick(self) -> None:
        """A loop turn with a rescan."""
        self._scan()
        self._read()

    @precondition(lambda self: self.source is not None)
    @rule()
    def read(self) -> None:
        """A loop turn woken by a modify event: reading without a rescan."""
        self._read()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.source is not None)
    @rule(crash=st.booleans())
    def stop(self, crash: bool) -> None:
        self._stop_agent(crash)

    @precondition(lambda self: self.source is None)
    @rule()
    def start(self) -> None:
        self._start_agent()

    @precondition(lambda self: self.source is not None)
    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        """``stop`` then ``start`` at once: nothing happens to the files in between."""
        self._stop_agent(crash)
        self._start_agent()

    @precondition(lambda self: self.spool is not None)
    @rule()
    def drain(self) -> None:
        self._drain()

    # -- the end ----------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.config is not None:
                self._final_check()
        finally:
            self._clean_up()

    def _final_check(self) -> None:
        if self.source is None:
            self._start_agent()
        assert self.config is not None
        self._scan()
        self._read()
        self.clock.now += self.config.rotate_wait + 1
        for _ in range(2):
            self._scan()
            self._read()
        live = self._live()
        held = {f.label for f in self.files if f.tracked}
        assert held == ({live.label} if live is not None else set()), (
            f"after rotate_wait the agent still holds {held}"
        )
        self._drain()

        counts = Counter(self.delivered)
        twice = sorted(n for n, c in counts.items() if c > 1)
        assert not twice, "delivered more than once: " + self._describe(twice)
        unexpected = sorted(n for n in counts if self.status.get(n) not in (MUST, RISK))
        assert not unexpected, "delivered but never written whole, or skipped: " + (
            self._describe(unexpected)
        )
        missing = sorted(n for n, s in self.status.items() if s == MUST and n not in counts)
        assert not missing, "not delivered: " + self._describe(missing)
        for f in self.files:
            order = [n for n in self.delivered if self.file_of.get(n) is f]
            assert order == sorted(order), f"{f.label}: lines delivered out of order: {order}"

    def _describe(self, ids: list[int]) -> str:
        return ", ".join(
            f"hit-{n} ({self.status.get(n, 'never completed')}, "
            f"{self.file_of[n].label if n in self.file_of else '?'})"
            for n in ids
        )

    def _clean_up(self) -> None:
        if self.source is not None:
            for tailed in self.source.files.values():
                os.close(tailed.fd)
            self.source = None
        if self.writer_fd is not None:
            os.close(self.writer_fd)
            self.writer_fd = None
        for spool in [*self.dropped_spools, self.spool]:
            if spool is not None:
                with suppress(sqlite3.Error):
                    spool.close()
        vars(file_module).update(self._patched)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the application's writes, mirrored in the model ----------------------------------

    def _live(self) -> ModelFile | None:
        return next((f for f in self.files if f.name == LIVE), None)

    def _rotated_name(self) -> str:
        self.rotations += 1
        return f"{LIVE}.{self.rotations}"

    def _new_file(self, fd: int) -> ModelFile:
        st_ = os.fstat(fd)
        f = ModelFile(f"F{len(self.files)}", f"{st_.st_dev}:{st_.st_ino}", LIVE)
        self.files.append(f)
        return f

    def _create_live(self) -> None:
        fd = os.open(self.logs / LIVE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._new_file(fd)
        finally:
            os.close(fd)

    def _open_writer(self) -> None:
        if self.writer_fd is not None:
            os.close(self.writer_fd)
        live = self._live()
        self.writer_fd = os.open(self.logs / LIVE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.writer = live if live is not None else self._new_file(self.writer_fd)

    def _write(self, data: bytes) -> None:
        assert self.writer is not None and self.writer_fd is not None
        assert os.write(self.writer_fd, data) == len(data)
        self.writer.size += len(data)
        self.writer.last_write = self.clock.now

    def _line(self, n: int) -> bytes:
        """The bytes of line ``n`` (without its newline): a native hit carrying ``hit-n``."""
        if not self.same_start:
            return hit_line(n)
        obj = orjson.loads(hit_line(n))
        obj["time"], obj["logged_at"] = BASE_TIME, BASE_TIME + 14
        return orjson.dumps(obj)

    def _line_done(self, n: int | None) -> None:
        f = self.writer
        assert f is not None
        f.lines.append((n, f.size))
        f.complete_end = f.size
        if n is not None:
            self.status[n] = RISK if f.abandoned else MUST
            self.file_of[n] = f

    def _append_lines(self, k: int) -> None:
        for _ in range(k):
            n = self.next_n
            self.next_n += 1
            self._write(self._line(n) + b"\n")
            self._line_done(n)

    def _write_partial(self, cut: int) -> None:
        assert self.writer is not None
        n = self.next_n
        self.next_n += 1
        line = self._line(n)
        cut = len(line) if cut < 0 else cut
        self._write(line[:cut])
        self.partial = Partial(n, cut, self.writer)

    def _complete_partial(self) -> None:
        partial = self.partial
        assert partial is not None and partial.file is self.writer
        self._write(self._line(partial.n)[partial.cut :] + b"\n")
        if partial.torn:
            self._line_done(None)  # a fragment: rejected, or skipped as blank
        else:
            self._line_done(partial.n)
        self.partial = None

    def _at_risk(self, n: int) -> None:
        if self.status.get(n) == MUST or n not in self.status:
            self.status[n] = RISK

    def _abandon(self, f: ModelFile) -> None:
        """Nothing will read ``f`` again: what it holds past its checkpoint, and whatever
        is written to it from now on, may be lost."""
        f.abandoned = True
        for n, end in f.lines:
            if n is not None and end > f.committed:
                self._at_risk(n)

    # -- the agent's steps, and what the model expects of them ----------------------------

    def _open_spool(self) -> Spool:
        spool = Spool(self.state_dir / "spool.db", self.metrics)
        spool.configure_webhooks({WEBHOOK: ALL})
        return spool

    def _start_agent(self) -> None:
        assert self.config is not None and self.source is None
        if self.spool is None:
            self.spool = self._open_spool()
        processor = LineProcessor(
            SOURCE,
            load_format("native"),
            MappingContext(),
            self.metrics,
            RejectedLog(self.state_dir, SOURCE),
        )
        source = FileSource(self.config, self.spool, processor, self.metrics)
        source._observer = NoObserver()  # type: ignore[assignment]
        source._open_initial()
        source.started.set()
        self.source = source
        live = self._live()
        if live is not None:
            if not self.started_once and self.config.start_at == "end":
                for n, _ in live.lines:
                    if n is not None and self.status[n] == MUST:
                        self.status[n] = SKIP
                live.committed = live.complete_end
            live.tracked = True
            live.read_pos = live.committed
        self.started_once = True
        self._check_held("start")

    def _stop_agent(self, crash: bool) -> None:
        assert self.source is not None and self.spool is not None
        for tailed in self.source.files.values():
            os.close(tailed.fd)
        self.source.files.clear()
        self.source = None
        for f in self.files:
            if f.tracked:
                f.tracked = False
                if f.name != LIVE:
                    self._abandon(f)
        if crash:
            self.dropped_spools.append(self.spool)
        else:
            self.spool.close()
        self.spool = None

    def _scan(self) -> None:
        assert self.source is not None
        self.source._scan()
        live = self._live()
        if live is not None and not live.tracked:
            assert live.committed == 0, "model: a file a scan picks up is new"
            live.tracked = True
            live.read_pos = 0
        self._check_held("scan")

    def _read(self) -> None:
        assert self.source is not None
        self.source._read_all()
        for f in self.files:
            if f.tracked and f.size > f.read_pos:
                f.read_pos = f.size
                f.committed = f.complete_end

    def _check_held(self, step: str) -> None:
        """The agent holds app.log (once a start or scan has seen it) and the files it held
        before, less those it released; a release is allowed only for a file that no
        longer matches, read to its end, not written to for ``rotate_wait``."""
        assert self.source is not None and self.config is not None
        held = set(self.source.files)
        for f in self.files:
            if not f.tracked or f.key in held:
                continue
            assert f.name != LIVE, f"after {step}: {f.label} (app.log) is not held"
            assert f.read_pos >= f.size, (
                f"after {step}: {f.label} released with {f.size - f.read_pos} bytes unread"
            )
            quiet = self.clock.now - f.last_write
            assert quiet >= self.config.rotate_wait, (
                f"after {step}: {f.label} released {quiet} s after its last write"
            )
            f.tracked = False
            self._abandon(f)
        expected = {f.key for f in self.files if f.tracked}
        if held != expected:
            names = {f.key: f.label for f in self.files}
            raise AssertionError(
                f"after {step}: the agent holds {sorted(names.get(k, k) for k in held)}, "
                f"the model expects {sorted(names[k] for k in expected)}"
            )

    def _drain(self) -> None:
        spool = self.spool
        assert spool is not None
        while (batch := spool.next_batch(WEBHOOK, 500, 1 << 20)) is not None:
            for obj in orjson.loads(batch.body):
                self.delivered.append(self._check_whole(obj, self.same_start))
            spool.finish_batch(WEBHOOK, batch)

    @staticmethod
    def _check_whole(obj: dict[str, Any], same_start: bool) -> int:
        """The line id a hit notification carries, after checking that the rest of it came
        from that same line (a torn line glued to another would not)."""
        assert obj["object_type"] == "hit", obj
        n = int(obj["id"][0].removeprefix("hit-"))
        assert obj["request_time"] == (BASE_TIME if same_start else BASE_TIME + n), f"torn: {obj}"
        assert obj["payloads"] == [f"'or {n}={n}--"], f"torn: {obj}"
        return n


#: A passing example takes about 25 ms; TAILER_MODEL_EXAMPLES=5000 for a longer search.
TailerModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("TAILER_MODEL_EXAMPLES", "500")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # One failure, shrunk, and no "explain" pass: a failing run stays well within the
    # suite's 120 s timeout.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestTailerModel = TailerModel.TestCase


# -- examples the machine found, replayed as they were shrunk ---------------------------------


@contextmanager
def machine() -> Iterator[TailerModel]:
    """A state machine to drive by hand; its teardown runs the final check."""
    state = TailerModel()
    try:
        yield state
    except BaseException:
        state._clean_up()
        raise
    state.teardown()


def native(prefill: int = 1, prefill_cut: int | None = None) -> dict[str, Any]:
    return {
        "start_at": "beginning",
        "rotate_wait": 0.0,
        "prefill": prefill,
        "prefill_cut": prefill_cut,
        "same_start": False,
    }


def test_truncated_and_regrown_past_the_offset_before_a_read_is_read_once() -> None:
    """b8c24db read from the old offset (a torn line, a line lost), then the rescan's
    fingerprint check read the file again from 0: hit-2 delivered twice."""
    with machine() as state:
        state.configure(**native())
        state.read()
        state.copytruncate(then_write=2)
        state.read()


def test_truncated_and_regrown_to_the_offset_then_truncated_again_loses_nothing() -> None:
    """b8c24db: the read after the regrowth saw size == offset and read nothing; the next
    truncate took hit-1 away before any rescan: lost."""
    with machine() as state:
        state.configure(**native())
        state.read()
        state.copytruncate(then_write=1)
        state.read()
        state.copytruncate(then_write=0)


def test_truncated_between_open_and_first_read_is_read_once() -> None:
    """b8c24db kept the fingerprint taken at open (hit-0) after reading the new content
    from 0; the next rescan took the stale fingerprint for a truncation: hit-1 twice."""
    with machine() as state:
        state.configure(**native())
        state.copytruncate(then_write=1)
        state.read()


def test_truncated_and_regrown_to_the_offset_with_the_same_first_bytes() -> None:
    """Lines that share their first 64 bytes: after a copytruncate the new content is as
    long as the old offset, so neither the size nor the fingerprint changed; hit-1 is
    never read."""
    with machine() as state:
        state.configure(**{**native(prefill=0), "same_start": True})
        state.append(k=1)
        state.read()
        state.copytruncate(then_write=1)


def test_a_reused_inode_with_the_same_first_bytes_is_read_from_its_start() -> None:
    """Stopped agent; app.log deleted and recreated on the same inode, its first line as
    long as the old checkpoint's offset and with the same first 64 bytes: the restart
    takes it for the old file and resumes past hit-1. (ext4 hands a freed inode out again
    at once only sometimes: the scenario is tried until it does.)"""
    for _ in range(20):
        state = TailerModel()
        try:
            state.configure(**{**native(), "same_start": True})
            state.read()
            state.stop(crash=False)
            state.delete_live()
            state.reopen_writer()
            reused = state.files[1].key == state.files[0].key
            if reused:
                state.append(k=1)
                state.start()
        except BaseException:
            state._clean_up()
            raise
        if reused:
            state.teardown()
            return
        state._clean_up()
    pytest.skip("this filesystem did not hand the freed inode out again")


def test_copytruncate_after_a_torn_line_twice() -> None:
    """Distinct lines, but each copytruncate tears a half-written line, so the file
    starts with the tail of a line both times: the same 64 bytes (``s":"monitored",
    "client":{...``) and the same length. The second truncation goes unnoticed and hit-3
    is never read."""
    with machine() as state:
        state.configure(**native(prefill=0, prefill_cut=200))
        state.copytruncate(then_write=1)
        state.tick()
        state.write_partial(cut=200)
        state.copytruncate(then_write=1)
