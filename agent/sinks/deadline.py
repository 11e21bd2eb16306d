"""A deadline on a whole exchange: a watchdog that shuts the socket down when it passes.

A socket timeout bounds one read or one write; a peer that trickles its status line, its
headers or its body a byte a second never trips it. ``Watchdog`` bounds the whole:
``arm(sock, deadline)`` before the exchange, ``disarm()`` after it (which says whether
the deadline cut it). If the deadline passes first, the watchdog's thread calls
``socket.socket.shutdown(sock, SHUT_RDWR)``: the plain socket's method, also for a TLS
socket (whose own ``shutdown`` would try to speak TLS from the wrong thread). The read
or write blocked in the other thread returns at once, with an end of stream or an error.

One thread per watchdog (per webhook), started at the first ``arm``. It sleeps until the
deadline armed and is woken only when a new deadline comes sooner than the one it sleeps
towards, so in the steady state (each request's deadline later than the one before)
arming and disarming cost two uncontended lock round trips and no wake-up.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time


class Watchdog:
    """Shuts an exchange's socket down when its deadline (monotonic) passes."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._sock: socket.socket | None = None  # armed: the socket to cut
        self._deadline = math.inf
        self._sleeping_until = math.inf  # when the thread looks again
        self._fired = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, deadline: float) -> None:
        """Watch ``sock`` until ``disarm``; shut it down if ``deadline`` passes first."""
        with self._cond:
            self._sock, self._deadline, self._fired = sock, deadline, False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> bool:
        """Stop watching; True if the deadline passed and the socket was shut down.

        Once this returns, the socket is never touched again, so the caller may reuse
        or close it.
        """
        with self._cond:
            self._sock = None
            return self._fired

    def cut_now(self) -> None:
        """End the exchange in flight at once, if one is (a replaced webhook's sink)."""
        with self._cond:
            if self._sock is not None:
                self._deadline = time.monotonic()
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._sock = None
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._sock is not None and now >= self._deadline:
                    with contextlib.suppress(OSError):  # already closed: nothing to cut
                        socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                    self._sock, self._fired = None, True
                    continue
                if self._sock is None:
                    self._sleeping_until = math.inf
                    self._cond.wait()
                else:
                    self._sleeping_until = self._deadline
                    self._cond.wait(self._deadline - now)
