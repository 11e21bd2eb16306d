"""Every metric tailhook exposes, declared once with its HELP text, and logging setup.

Metrics are declared against an injected ``CollectorRegistry`` so each agent (and each
test) has its own. Label values come from closed sets: source and webhook names from the
config, event types, outcomes, status codes. Never a path, an address or a payload.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

from agent import __version__


class Metrics:
    """The metric families of CONTRACT §7."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
    """Send the ``agent`` loggers to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("...", extra=fields(webhook=name))``."""
    return {"fields": values}
