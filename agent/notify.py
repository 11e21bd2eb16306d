"""systemd's notify protocol, spoken directly (no libsystemd), and the watchdog thread.

systemd passes ``NOTIFY_SOCKET`` to a ``Type=notify`` service: a datagram socket, named by
a path (``/run/systemd/notify``) or by an abstract address (``@name`` stands for the
address ``\\0name``). Each message is one datagram of ``KEY=VALUE`` lines:

- ``READY=1`` once tailhook is ready (``/readyz`` answers 200);
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC`` in µs) when a reload
  begins, then ``READY=1`` when it is done, refused or not;
- ``STOPPING=1`` when shutdown begins, with ``EXTEND_TIMEOUT_USEC=`` so that a raised
  ``shutdown_timeout`` is not cut short by the unit's ``TimeoutStopSec``;
- ``STATUS=`` one line for ``systemctl status``: events/s read and delivered, the
  backlog, the failing webhooks;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, and only while every source and sink loop
  is healthy: a stuck loop stops the pings, so systemd restarts tailhook. Pings go out
  only when ``WATCHDOG_PID`` is unset or names this process (systemd sets both).

``Notifier`` sends; ``Watchdog`` is the thread that pings and keeps ``STATUS`` current;
``StatusLine`` builds the status line from the metrics. Without ``NOTIFY_SOCKET`` (run
by hand, in a container) all of it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client.metrics import MetricWrapperBase

from agent.telemetry import Metrics, fields

log = logging.getLogger(__name__)

#: A notification that cannot be sent within this long is given up (and logged).
SEND_TIMEOUT = 2.0
#: How often ``STATUS=`` is refreshed.
STATUS_INTERVAL = 5.0


def notify_address(value: str) -> str | bytes:
    """The socket address ``NOTIFY_SOCKET`` names: a path, or an abstract address."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    raise ValueError("NOTIFY_SOCKET must be an absolute path or an @abstract name")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd wants a ``WATCHDOG=1``, or None when the watchdog is
    off or meant for another process (``WATCHDOG_PID``). Raises ``ValueError`` on a
    value that is not a positive integer."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and not owner.isdigit():
        raise ValueError(f"WATCHDOG_PID={owner!r} is not a process id")
    if owner and int(owner) != pid:
        return None
    if not usec.isdigit() or int(usec) == 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    return int(usec) / 1_000_000


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock of ``MONOTONIC_USEC=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to systemd; every method is a no-op without a socket and
    returns whether the datagram went out. Safe to call from any thread."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        #: Seconds within which systemd wants a ping; None when it wants none.
        self.watchdog_interval = watchdog if address is not None else None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment asks for (``NOTIFY_SOCKET``,
        ``WATCHDOG_USEC``, ``WATCHDOG_PID``). A value that cannot be used is logged as a
        warning and that part is off: tailhook still runs."""
        environ = os.environ if environ is None else environ
        value = environ.get("NOTIFY_SOCKET")
        if not value:
            return cls(None)
        try:
            address = notify_address(value)
        except ValueError as exc:
            log.warning("systemd is not notified", extra=fields(error=str(exc)))
            return cls(None)
        try:
            interval = watchdog_interval(environ, os.getpid())
        except ValueError as exc:
            log.warning("systemd's watchdog is not pinged", extra=fields(error=str(exc)))
            interval = None
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # -- the messages -----------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Started, or done reloading (whether the new config was taken or refused)."""
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload begins; ``ready()`` must follow when it ends."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *_status(status))

    def stopping(self, status: str | None = None, extend_timeout: float | None = None) -> bool:
        """Shutdown begins. ``extend_timeout``: seconds it may take, if more than the
        unit's ``TimeoutStopSec`` allows."""
        extra = [f"EXTEND_TIMEOUT_USEC={int(extend_timeout * 1e6)}"] if extend_timeout else []
        return self.send("STOPPING=1", *extra, *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def ping(self) -> bool:
        """``WATCHDOG=1``: the service is alive (the caller checked that it is)."""
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines. A failure is logged once (until a send
        works again) and never raised: systemd being away must not stop tailhook."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self.address)
        except OSError as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                log.warning(
                    "Cannot notify systemd; tailhook goes on",
                    extra=fields(error=exc.strerror or str(exc)),
                )
            return False
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.warning("Notifying systemd works again")
        return True


def _status(text: str | None) -> list[str]:
    return [] if text is None else ["STATUS=" + " ".join(text.split())]


class StatusLine:
    """``systemctl status``'s one line, from the metrics: events read and delivered per
    second since the last line, the backlog (events kept and not yet delivered, summed
    over webhooks) and the failing webhooks: those whose requests since the last line
    all failed, or, with none since, whose last requests did (a webhook in backoff)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._time = clock()
        self._read = _total(metrics.events, outcome="accepted")
        self._delivered = _total(metrics.delivered)
        self._answers = self._answers_by_webhook()
        self._failing: set[str] = set()

    def text(self) -> str:
        now = self._clock()
        elapsed = max(now - self._time, 1e-9)
        read = _total(self._metrics.events, outcome="accepted")
        delivered = _total(self._metrics.delivered)
        answers = self._answers_by_webhook()
        for webhook, (ok, failed) in answers.items():
            ok_before, failed_before = self._answers.get(webhook, (0.0, 0.0))
            if ok > ok_before:
                self._failing.discard(webhook)
            elif failed > failed_before:
                self._failing.add(webhook)
        line = (
            f"{_rate((read - self._read) / elapsed)} events/s read, "
            f"{_rate((delivered - self._delivered) / elapsed)} events/s delivered, "
            f"backlog {int(_total(self._metrics.backlog))}"
        )
        if self._failing:
            line += "; failing webhooks: " + ", ".join(sorted(self._failing))
        self._time, self._read, self._delivered, self._answers = now, read, delivered, answers
        return line

    def _answers_by_webhook(self) -> dict[str, tuple[float, float]]:
        """Per webhook: requests answered 2xx, and every other outcome."""
        counts: dict[str, tuple[float, float]] = {}
        for family in self._metrics.requests.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                ok, failed = counts.get(sample.labels["webhook"], (0.0, 0.0))
                if sample.labels["code"].startswith("2"):
                    ok += sample.value
                else:
                    failed += sample.value
                counts[sample.labels["webhook"]] = (ok, failed)
        return counts


def _total(metric: MetricWrapperBase, **labels: str) -> float:
    """The sum of a counter's or gauge's samples whose labels include ``labels``."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


class Watchdog:
    """A thread that pings systemd's watchdog every half interval while ``healthy()``
    holds, and refreshes ``STATUS=`` every ``status_every`` seconds. While a loop is
    stuck or stopped it withholds the pings (systemd then restarts tailhook), says why
    in ``STATUS=`` and logs it once as an ERROR."""

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], tuple[bool, str]],
        status: Callable[[], str],
        status_every: float = STATUS_INTERVAL,
    ) -> None:
        self.notifier = notifier
        self._healthy = healthy
        self._status = status
        self._status_every = status_every
        self._unhealthy: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)

    def start(self) -> None:
        """Start pinging (a no-op without a notify socket)."""
        if self.notifier.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(SEND_TIMEOUT + 1)

    def _run(self) -> None:
        interval = self.notifier.watchdog_interval
        half = interval / 2 if interval is not None else None
        now = time.monotonic()
        next_ping, next_status = now, now + self._status_every
        while True:
            due = min(next_ping, next_status) if half is not None else next_status
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            now = time.monotonic()
            if half is not None and now >= next_ping:
                self._check_and_ping()
                next_ping = now + half
            if now >= next_status:
                self._send_status()
                next_status = now + self._status_every

    def _check_and_ping(self) -> None:
        try:
            ok, why = self._healthy()
        except Exception:
            log.exception("Checking the loops failed; systemd's watchdog is not pinged")
            return
        if ok:
            if self._unhealthy is not None:
                log.warning("Every loop makes progress again; systemd's watchdog is pinged")
                self._unhealthy = None
            self.notifier.ping()
            return
        if self._unhealthy is None:
            log.error(
                "A loop is stuck or stopped; systemd's watchdog is no longer pinged, so"
                " systemd restarts tailhook",
                extra=fields(reason=why),
            )
            self.notifier.status("unhealthy: " + why)
        self._unhealthy = why

    def _send_status(self) -> None:
        try:
            text = self._status()
        except Exception:
            log.exception("Building the status line failed")
            return
        if self._unhealthy is not None:
            text = f"unhealthy: {self._unhealthy}; {text}"
        self.notifier.status(text)
