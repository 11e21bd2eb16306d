"""Every metric tailhook exposes, declared once with its HELP text, and logging setup.

Metrics are declared against an injected ``CollectorRegistry`` so each agent (and each
test) has its own. Label values come from closed sets: source and webhook names from the
config, event types, outcomes, status codes. Never a path, an address or a payload.

An operator alerts on ``increase()``, which sees nothing of a series' first sample: so
every label set known when a source or webhook starts is exported at 0 from then on
(``declare_source``, ``declare_webhook``; the agent calls them at start and at every
reload that starts one), and a removed one's gauges go (``forget_source``,
``forget_webhook``) rather than stay at their last value. The client library's
``*_created`` series are turned off: they double the series and no rule uses them.

Logging: ``setup_logging`` sends every logger (tailhook's and its libraries') to stderr
as one JSON object per line (or text), and routes what Python would otherwise print raw
there (an uncaught exception in any thread, an exception it cannot raise, a warning)
into log lines, the traceback a field. ``ThrottledWarning`` is a warning that may repeat
for every connection or file, logged at most every few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    platform_collector,
    process_collector,
)

from agent import __version__
from agent.errors import REJECT_REASONS
from agent.formats import EVENT_TYPES

#: ``tailhook_webhook_requests_total{code}`` of a request that got no HTTP status (the
#: kinds of ``agent.errors.DeliveryError``); statuses are not known in advance.
FAILED_REQUEST_CODES = ("timeout", "connection", "tls")
#: ``tailhook_webhook_events_dead_lettered_total{reason}`` (``agent.sinks.deadletter``).
DEAD_LETTER_REASONS = ("rejected", "expired")
#: ``tailhook_webhook_events_discarded_total{reason}`` (``Agent.apply``).
DISCARD_REASONS = ("deleted", "disabled")


class Metrics:
    """The metric families of CONTRACT §7."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Process-wide in the client library; every Metrics wants it, so each sets it.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
        r = registry
        self.source_lines = Counter(
            "tailhook_source_lines_total", "Lines read from a source.", ["source"], registry=r
        )
        self.source_bytes = Counter(
            "tailhook_source_bytes_total", "Bytes read from a source.", ["source"], registry=r
        )
        self.events = Counter(
            "tailhook_events_total",
            "Input lines by outcome: accepted, or the reason they were rejected.",
            ["source", "event_type", "outcome"],
            registry=r,
        )
        self.file_lag = Gauge(
            "tailhook_file_lag_bytes",
            "Bytes written to a source's files that tailhook has not read yet.",
            ["source"],
            registry=r,
        )
        self.file_truncations = Counter(
            "tailhook_file_truncations_total",
            "Files that shrank below the read offset (copytruncate) and were read again.",
            ["source"],
            registry=r,
        )
        self.socket_connections = Gauge(
            "tailhook_socket_connections",
            "Stream clients connected to a unix_socket source.",
            ["source"],
            registry=r,
        )
        self.socket_connections_refused = Counter(
            "tailhook_socket_connections_refused_total",
            "Connections to a unix_socket source closed at once: max_connections were open.",
            ["source"],
            registry=r,
        )
        self.socket_idle_closed = Counter(
            "tailhook_socket_connections_idle_closed_total",
            "Stream clients of a unix_socket source closed after idle_timeout without a byte.",
            ["source"],
            registry=r,
        )
        self.source_files = Gauge(
            "tailhook_source_files",
            "Files a file source has open and is tailing.",
            ["source"],
            registry=r,
        )
        self.source_errors = Counter(
            "tailhook_source_errors_total",
            "Failures to open or read a source's input, by reason: permission, not_found, io.",
            ["source", "reason"],
            registry=r,
        )
        self.worker_failures = Counter(
            "tailhook_pipeline_worker_failures_total",
            "Bursts a file source's conversion workers failed on (a worker died): each was"
            " converted again in the source's own thread.",
            ["source"],
            registry=r,
        )
        self.metrics_connections_refused = Counter(
            "tailhook_metrics_connections_refused_total",
            "Connections to the metrics listener closed at once: all its slots were busy.",
            registry=r,
        )
        self.socket_fragments_dropped = Counter(
            "tailhook_socket_fragments_dropped_total",
            "Incomplete lines lost because their client went away (or a datagram was cut).",
            ["source"],
            registry=r,
        )
        self.requests = Counter(
            "tailhook_webhook_requests_total",
            "Webhook requests by HTTP status, or timeout, connection or tls.",
            ["webhook", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tailhook_webhook_request_duration_seconds",
            "Time from sending a webhook request to having its full response.",
            ["webhook"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.delivered = Counter(
            "tailhook_webhook_events_delivered_total",
            "Events a webhook acknowledged with a 2xx answer.",
            ["webhook", "event_type"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "tailhook_webhook_events_dead_lettered_total",
            "Events written to the dead-letter file, by reason (rejected, expired).",
            ["webhook", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "tailhook_webhook_retries_total",
            "Webhook requests that were attempts after the first for their batch.",
            ["webhook"],
            registry=r,
        )
        self.backlog = Gauge(
            "tailhook_webhook_backlog_events",
            "Events kept for a webhook and not yet delivered.",
            ["webhook"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "tailhook_webhook_oldest_event_age_seconds",
            "Age of the oldest event kept for a webhook and not yet delivered.",
            ["webhook"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            "tailhook_spool_bytes", "Bytes of events held in the spool.", registry=r
        )
        self.spool_capacity_ratio = Gauge(
            "tailhook_spool_capacity_ratio",
            "The spool's files on disk (database, WAL, WAL index, headroom reserve) over"
            " spool.max_bytes.",
            registry=r,
        )
        self.spool_dropped = Counter(
            "tailhook_spool_dropped_events_total",
            "Undelivered events discarded because the spool was full (when_full: drop_oldest).",
            registry=r,
        )
        self.filtered = Counter(
            "tailhook_webhook_events_filtered_total",
            "Events a webhook's filter excluded: never kept for that webhook.",
            ["webhook", "event_type"],
            registry=r,
        )
        self.discarded = Counter(
            "tailhook_webhook_events_discarded_total",
            "Undelivered events dropped because their webhook was deleted or disabled"
            " (reason) by a reload.",
            ["webhook", "reason"],
            registry=r,
        )
        self.reload_successful = Gauge(
            "tailhook_config_last_reload_successful",
            "1 if the last config reload succeeded, 0 if it was refused.",
            registry=r,
        )
        self.reloads = Counter(
            "tailhook_config_reloads_total",
            "Config reloads by result (the start-up load is not a reload).",
            ["result"],
            registry=r,
        )
        self.build_info = Gauge(
            "tailhook_build_info", "Always 1; the version is the label.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.reload_successful.set(1)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)

    def declare_source(self, source: str, tails_files: bool) -> None:
        """Export a source's series at 0: lines, bytes, and every event type and
        ``unknown`` by every outcome it can have (``accepted`` and ``invalid_schema``
        for a known type; any reason for ``unknown``)."""
        self.source_lines.labels(source=source)
        self.source_bytes.labels(source=source)
        for event_type in EVENT_TYPES:
            self.events.labels(source, event_type, "accepted")
            self.events.labels(source, event_type, "invalid_schema")
        for outcome in REJECT_REASONS:
            self.events.labels(source, "unknown", outcome)
        if tails_files:
            self.file_truncations.labels(source=source)
            self.file_lag.labels(source=source)
            self.source_files.labels(source=source)
            self.worker_failures.labels(source=source)
        else:
            self.socket_connections.labels(source=source)
            self.socket_connections_refused.labels(source=source)
            self.socket_idle_closed.labels(source=source)
            self.socket_fragments_dropped.labels(source=source)

    def declare_webhook(self, webhook: str, event_types: Iterable[str]) -> None:
        """Export a webhook's series at 0: delivered and filtered for each event type it
        takes, dead letters and discards by reason, retries, requests that got no
        status, the request histogram, its backlog and its oldest event's age."""
        for event_type in event_types:
            self.delivered.labels(webhook=webhook, event_type=event_type)
            self.filtered.labels(webhook=webhook, event_type=event_type)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(webhook=webhook, reason=reason)
        for reason in DISCARD_REASONS:
            self.discarded.labels(webhook=webhook, reason=reason)
        for code in FAILED_REQUEST_CODES:
            self.requests.labels(webhook=webhook, code=code)
        self.retries.labels(webhook=webhook)
        self.request_duration.labels(webhook=webhook)
        self.backlog.labels(webhook=webhook)
        self.oldest_age.labels(webhook=webhook)

    def forget_webhook(self, webhook: str) -> None:
        """A webhook deleted or disabled: its gauges go (a backlog or an age left at its
        last value would keep an alert firing); its counters stay, as counters do."""
        for gauge in (self.backlog, self.oldest_age):
            _remove(gauge, webhook)

    def forget_source(self, source: str) -> None:
        """A source removed: its gauges go, as ``forget_webhook``'s do."""
        for gauge in (self.file_lag, self.source_files, self.socket_connections):
            _remove(gauge, source)


def _remove(gauge: Gauge, value: str) -> None:
    """Drop one label set of a one-label gauge, if it was ever set (older client
    libraries raise ``KeyError`` for one that was not)."""
    with contextlib.suppress(KeyError):
        gauge.remove(value)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL message key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", None)
        extra = ""
        if isinstance(fields, dict):
            extra = "".join(f" {key}={value}" for key, value in fields.items())
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}{extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str, fmt: str) -> None:
    """Send every logger to stderr in the configured format: tailhook's at ``level``, its
    libraries' (watchdog, urllib3) at warning or above. Uncaught exceptions of any
    thread, exceptions Python cannot raise, and warnings become log lines too, so nothing
    but log lines ever reaches stderr."""
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    threshold = logging.getLevelName(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, threshold))
    ours = logging.getLogger("agent")
    ours.handlers.clear()
    ours.setLevel(threshold)
    ours.propagate = True
    logging.captureWarnings(True)  # to the "py.warnings" logger, then to the handler above
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that reports a record it cannot format (``"%d" % "x"``) as a log
    line of its own, instead of logging's raw ``--- Logging error ---`` text."""

    def handleError(self, record: logging.LogRecord) -> None:
        failure = logging.LogRecord(
            "agent.logging",
            logging.ERROR,
            record.pathname,
            record.lineno,
            "A log line could not be formatted; its message is a field",
            None,
            sys.exc_info(),
        )
        failure.fields = {"record_logger": record.name, "record_message": str(record.msg)[:1000]}
        try:
            self.stream.write(self.format(failure) + self.terminator)
            self.flush()
        except Exception:  # noqa: BLE001 - stderr itself failed: nowhere left to say so
            pass


_crash_log = logging.getLogger("agent.crash")


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook``: the exception that ends the program, as one log line."""
    if issubclass(kind, KeyboardInterrupt):
        _crash_log.info("Interrupted")
        return
    _crash_log.critical(
        "tailhook stopped on an unexpected error",
        exc_info=(kind, value, tb),
        extra=fields(error=_describe(value)),
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: an exception that ended a thread, as one log line."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else None
    value = args.exc_value
    _crash_log.error(
        "A thread ended on an unexpected error",
        exc_info=(args.exc_type, value, args.exc_traceback) if value is not None else None,
        extra=fields(thread=name, error=_describe(value)),
    )


def _log_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: an exception Python could not raise (in ``__del__``, say)."""
    value = unraisable.exc_value
    _crash_log.warning(
        unraisable.err_msg or "Exception ignored",
        exc_info=(unraisable.exc_type, value, unraisable.exc_traceback)
        if value is not None
        else None,
        extra=fields(object=_safe_repr(unraisable.object), error=_describe(value)),
    )


def _safe_repr(thing: object) -> str:
    try:
        return repr(thing)[:200]
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not hide the error
        return f"<{type(thing).__name__}: repr failed: {type(exc).__name__}>"


def _describe(value: BaseException | None) -> str:
    if value is None:
        return ""
    return "".join(traceback.format_exception_only(type(value), value)).strip()


class ThrottledWarning:
    """A warning that may repeat for every connection (or file), logged at most once every
    ``every`` seconds, saying how many it did not log since."""

    def __init__(self, logger: logging.Logger, message: str, every: float = 10.0) -> None:
        self.logger = logger
        self.message = message
        self.every = every
        self._last = -every
        self._skipped = 0
        self._lock = threading.Lock()

    def warn(self, **values: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every:
                self._skipped += 1
                return
            skipped, self._skipped, self._last = self._skipped, 0, now
        self.logger.warning(self.message, extra=fields(**values, not_logged_since=skipped))


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("...", extra=fields(webhook=name))``."""
    return {"fields": values}
