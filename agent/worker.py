"""The thread every source and sink runs: a step at a time, surviving failures.

``Worker`` owns start, stop, join and liveness, so a source or a sink only says what one
step of its work is (``step``) and what to set up and tear down around the loop.

Stopping comes in two strengths:

- ``stop()``: end now. The loop ends at the next step; every pause ends at once.
- ``stop(deadline=T)``: finish up until ``T`` (monotonic). ``stopping`` is True, so a
  sink drains what it has rather than waiting for more, but pauses keep their length
  (clipped at ``T``): a webhook in backoff stays in backoff while draining, and a loop
  whose step keeps failing never spins. Past ``T`` the worker ends like after ``stop()``.

A ``StateError`` (the spool cannot be written: a full disk, say) pauses the loop and is
logged once per outage as an ERROR, then once more when it ends; any other exception is
logged with its traceback and the loop goes on after a pause (as sentry-python's
background worker does). Nothing but a stop ends the loop.

``beat`` is the monotonic time the loop last showed progress: it began a step, came back
from a ``pause``, or (through ``heartbeat()``) waited for something that is not its own
fault, such as room in a full spool. Every step returns within ``step_budget`` seconds,
the pauses it asks for not counted, so ``overdue`` tells a loop that is stuck from one
that is merely idle or waiting: the systemd watchdog and ``/healthz`` ask it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from agent.errors import StateError
from agent.telemetry import fields

log = logging.getLogger(__name__)

#: Pause after a failure that is not the input's or the receiver's.
RECOVERY_WAIT = 1.0
#: How long a step may take, pauses not counted, before its loop counts as stuck: a read
#: and a commit, a rescan, a select round take well under a second; this leaves room for
#: a slow disk or a name lookup. A sink adds its request timeouts.
STEP_BUDGET = 30.0

_running = threading.local()  # .worker: the Worker whose loop runs in this thread


def heartbeat() -> None:
    """The worker running in this thread is waiting, not stuck (the spool is full and it
    waits for room): refresh its ``beat``. Does nothing in any other thread."""
    worker: Worker | None = getattr(_running, "worker", None)
    if worker is not None:
        worker.beat = time.monotonic()


class Loop(Protocol):
    """What health checks see of a source or a sink."""

    name: str

    def is_alive(self) -> bool: ...

    def overdue(self, now: float) -> float: ...


def loop_problems(loops: Iterable[Loop], now: float) -> list[str]:
    """What is wrong with each loop that is not healthy: ``NAME stopped`` (its thread
    ended) or ``NAME stuck for N s`` (no progress for N s past its ``step_budget``)."""
    problems = []
    for loop in loops:
        if not loop.is_alive():
            problems.append(f"{loop.name} stopped")
        elif (late := loop.overdue(now)) > 0:
            problems.append(f"{loop.name} stuck for {late:.0f} s past its step budget")
    return problems


class Worker:
    """A named thread running ``step`` until stopped. Subclasses override ``step`` and,
    when they need them, ``setup`` and ``teardown``."""

    #: What the loop does, for log lines ("reading", "delivery").
    activity = "work"

    def __init__(self, thread_name: str, context: dict[str, Any]) -> None:
        self.context = context  # the fields every log line carries (source=..., webhook=...)
        self.beat = time.monotonic()
        #: Seconds a step may take, its pauses not counted (see ``overdue``).
        self.step_budget = STEP_BUDGET
        self._resting_until = 0.0  # the end of the pause in progress (0: none)
        self._stop = threading.Event()  # asked to stop (perhaps with a deadline)
        self._halt = threading.Event()  # asked to end now: pauses end at once
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float | None = None) -> None:
        """Stop: now, or (with ``deadline``, monotonic) after finishing up until then."""
        self._deadline = deadline
        self._stop.set()
        if deadline is None:
            self._halt.set()
        self.wake()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """A stop was asked for (the worker may still be finishing up)."""
        return self._stop.is_set()

    @property
    def halted(self) -> bool:
        """The worker must end now: stopped without a deadline, or past it."""
        if self._halt.is_set():
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._halt.set()
            return True
        return False

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the worker halts (or its deadline comes first).
        Returns False if the worker must end. A pause is not being stuck."""
        until = time.monotonic() + seconds
        if self._deadline is not None:
            until = min(until, self._deadline)
        self._resting_until = until
        self._halt.wait(max(0.0, until - time.monotonic()))
        self.beat = time.monotonic()  # before the pause ends for ``overdue``: no gap
        self._resting_until = 0.0
        return not self.halted

    def overdue(self, now: float) -> float:
        """Seconds the loop is past ``step_budget`` without showing progress, pauses not
        counted; 0.0 for a loop that is working, idle or waiting as it should."""
        resting_until = self._resting_until  # read first: ``pause`` writes it last
        last = max(self.beat, resting_until)
        return max(0.0, now - last - self.step_budget)

    # -- what subclasses provide ------------------------------------------------------

    def setup(self) -> None:
        """Runs in the thread before the first step."""

    def step(self) -> bool:
        """One unit of work; return False to end the loop. Must return within a bounded
        time (a second or two, or a request's timeout) so ``beat`` means something."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Runs in the thread after the loop, whatever ended it."""

    def wake(self) -> None:
        """Wake the thread if it is waiting for work (so it notices a stop)."""

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        _running.worker = self
        try:
            self.setup()
            self._loop()
        except Exception:
            log.exception(
                f"{self.activity.capitalize()} could not start", extra=fields(**self.context)
            )
        finally:
            self.teardown()

    def _loop(self) -> None:
        failing = False
        while not self.halted:
            self.beat = time.monotonic()
            try:
                if not self.step():
                    return
            except StateError as exc:
                if self.stopping:
                    return  # the spool closes at shutdown; what was not kept is read again
                if not failing:
                    log.error(
                        f"The spool cannot be written; {self.activity} pauses until it can",
                        extra=fields(**self.context, error=str(exc)),
                    )
                failing = True
                if not self.pause(RECOVERY_WAIT):
                    return
                continue
            except Exception:
                log.exception(
                    f"Unexpected error in {self.activity}; it goes on after a pause",
                    extra=fields(**self.context),
                )
                if not self.pause(RECOVERY_WAIT):
                    return
                continue
            if failing:
                log.warning(f"{self.activity.capitalize()} resumed", extra=fields(**self.context))
                failing = False
