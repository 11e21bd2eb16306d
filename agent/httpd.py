"""The metrics listener: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

Bounded, so no client can starve the agent:

- At most ``MAX_CONNECTIONS`` connections are served at once, each in a thread of its
  own; a further one is closed at once and counted in
  ``tailhook_metrics_connections_refused_total``.
- A connection that sends nothing for ``IDLE_SECONDS`` is closed (the socket timeout);
  a request must arrive whole and be answered within ``REQUEST_SECONDS`` of the server
  starting to wait for it, or its connection is shut down (so a client trickling a byte
  now and then cannot hold a slot either).
- Errors go to the logger, never to stderr raw: a client that went away mid-request or
  mid-answer is a debug line, anything else a warning with its traceback.

A listen address in use is an ``OSError`` (``errno.EADDRINUSE``) from the constructor,
for the caller to report against ``metrics.listen``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from agent.telemetry import ThrottledWarning, fields

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
IDLE_SECONDS = 5.0
REQUEST_SECONDS = 10.0
#: Connections the kernel may hold before they are accepted: a burst is accepted (and,
#: beyond MAX_CONNECTIONS, closed) rather than left hanging in connect().
LISTEN_BACKLOG = 128


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # applied to the connection's socket by StreamRequestHandler

    def handle_one_request(self) -> None:
        self.server.set_deadline(self.connection, time.monotonic() + REQUEST_SECONDS)
        super().handle_one_request()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.server.healthy()
            self._answer(200 if ok else 503, (why + "\n").encode())
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._answer(200 if ok else 503, (why + "\n").encode())
        else:
            self._answer(404, b"not found\n")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes, and malformed requests (answered 400), are not worth a log line each."""


class MetricsServer(HTTPServer):
    """The listener, and the threads serving its connections (at most MAX_CONNECTIONS)."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        refused: Counter | None = None,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self._refused = refused
        self._refused_log = ThrottledWarning(
            log, "The metrics listener has no free slot; a new connection was closed at once"
        )
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[socket.socket, float] = {}  # the connections being served
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()
        with self._lock:
            for conn in self._deadlines:
                _shut(conn)

    # -- connections ------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a thread of its own if a slot is free, else close it."""
        if not self._slots.acquire(blocking=False):
            if self._refused is not None:
                self._refused.inc()
            self._refused_log.warn(max_connections=MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        self.set_deadline(request, time.monotonic() + REQUEST_SECONDS)
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), name="metrics-conn", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread can be started now (the caller closes it)
            self._forget(request)
            self._slots.release()
            raise

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - handle_error logs it
            self.handle_error(request, client_address)
        finally:
            self._forget(request)  # before closing: never shut down a closed socket
            self.shutdown_request(request)
            self._slots.release()

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)

    def set_deadline(self, conn: socket.socket, deadline: float) -> None:
        with self._lock:
            self._deadlines[conn] = deadline

    def service_actions(self) -> None:
        """Twice a second, in the listener's thread: shut down connections past their
        deadline, which ends whatever read or write their thread is blocked in."""
        now = time.monotonic()
        with self._lock:
            for conn, deadline in self._deadlines.items():
                if deadline <= now:
                    log.debug("A metrics request took too long; its connection is closed")
                    self._deadlines[conn] = float("inf")  # shut down once
                    _shut(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the exception being handled, instead of printing it raw to stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):  # reset, broken pipe, too slow
            log.debug("A metrics client went away or was too slow", extra=fields(error=str(error)))
        elif isinstance(error, OSError) and error.errno is not None:
            log.debug("A metrics connection failed", extra=fields(error=str(error)))
        else:
            log.warning("Answering a metrics request failed", exc_info=True)


def _shut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        conn.shutdown(socket.SHUT_RDWR)
