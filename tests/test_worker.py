"""The `Worker` loop itself: a step that keeps failing never spins, stopping or not."""

from __future__ import annotations

import logging
import time

import pytest

from agent import worker
from agent.errors import StateError
from agent.worker import Worker


class AlwaysFailing(Worker):
    """A worker whose every step raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__("always-failing", {"test": "worker"})
        self.error = error
        self.calls: list[float] = []

    def step(self) -> bool:
        self.calls.append(time.monotonic())
        raise self.error


#: How long a failing worker runs: five and a half RECOVERY_WAITs (0.1 s here), so about
#: six tries if it waits before each, thousands if it spins. A rate needs a fixed window.
RUNNING_FOR = 0.55


@pytest.fixture(autouse=True)
def quick_recovery(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker, "RECOVERY_WAIT", 0.1)
    caplog.set_level(logging.CRITICAL)  # one traceback per try: not what these tests read


def test_a_failing_step_waits_before_each_try_while_stopping_with_a_deadline() -> None:
    failing = AlwaysFailing(RuntimeError("boom"))
    failing.start()
    stopped = time.monotonic()
    failing.stop(deadline=stopped + 1.0)
    failing.join(5)
    assert not failing.is_alive()
    took = time.monotonic() - stopped
    # Tries about once per RECOVERY_WAIT until the deadline, then ends: not a busy loop,
    # and not giving up at the stop either.
    assert 0.9 <= took < 1.5, took
    assert 5 <= len(failing.calls) <= 12, len(failing.calls)
    gaps = [b - a for a, b in zip(failing.calls, failing.calls[1:], strict=False)]
    assert min(gaps) >= 0.09  # a pause clipped at the deadline ends the loop instead


def test_a_failing_step_waits_before_each_try_while_running() -> None:
    failing = AlwaysFailing(RuntimeError("boom"))
    failing.start()
    time.sleep(RUNNING_FOR)
    failing.stop()
    failing.join(5)
    assert not failing.is_alive()
    assert 3 <= len(failing.calls) <= 7, len(failing.calls)


def test_stop_without_a_deadline_ends_a_pause_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "RECOVERY_WAIT", 30.0)
    failing = AlwaysFailing(RuntimeError("boom"))
    failing.start()
    deadline = time.monotonic() + 5
    while not failing.calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stopped = time.monotonic()
    failing.stop()
    failing.join(5)
    assert time.monotonic() - stopped < 1.0
    assert len(failing.calls) == 1


def test_a_spool_failure_while_stopping_ends_the_loop() -> None:
    # The spool closes at shutdown: what was not kept is read or sent again next start.
    failing = AlwaysFailing(StateError("the spool is closed"))
    failing.stop(deadline=time.monotonic() + 5.0)
    failing.start()
    failing.join(5)
    assert not failing.is_alive()
    assert len(failing.calls) == 1
