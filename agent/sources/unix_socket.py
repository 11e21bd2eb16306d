"""The UNIX socket source: listens on one ``AF_UNIX`` socket, stream or datagram.

``mode: stream``: any number of writers (up to ``max_connections``) connect and write
newline-delimited lines; each connection has its own ``LineSplitter``, so a line sent in
pieces is joined and lines of different writers never mix. A writer that goes away in
the middle of a line loses that fragment alone (``tailhook_socket_fragments_dropped_total``).
A client that has sent nothing for ``idle_timeout`` and has nothing waiting to be read
is closed, like one that left, so idle clients cannot hold every ``max_connections``
slot. (A writer held back by a full spool always has bytes waiting: it is not idle.)
``mode: datagram``: each datagram carries one or more lines, the last newline optional.

One thread runs a ``selectors`` loop over the listening socket and the connections,
reading without blocking. The lines of one round of reads are processed together and
appended to the spool; a socket has no offset to checkpoint, so a line is accepted once
it is in the spool. While the spool is full (``when_full: block``) the append waits and
nothing is read, so the kernel's buffers fill and writers block in ``send``.

The socket file: the parent directory is created if missing; a stale socket file (one
nobody answers on) is replaced; anything else at the path, or a socket some process is
listening on, is a ``SourceError`` and is left untouched. ``socket_mode`` is applied
without a moment of wider permissions: the socket is bound with its owner's bits only
(``fchmod`` before ``bind``), then ``chmod``-ed. On stop the socket file is removed if it
is still the one this source bound.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from agent.config import SocketSourceConfig
from agent.errors import SourceError
from agent.pipeline import LineProcessor
from agent.sources import ERROR_REASONS, commit_bytes
from agent.sources.lines import LineSplitter
from agent.sources.socket_path import open_socket, remove_socket_file
from agent.spool import NewSegment, Spool
from agent.telemetry import Metrics, ThrottledWarning, fields
from agent.worker import Worker

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
#: Datagrams are received into a buffer of at least this size (the kernel's default
#: ``wmem`` caps what a writer can send in one datagram near 208 KiB).
DATAGRAM_BYTES = 256 * 1024
RCVBUF_BYTES = 1024 * 1024
ACCEPTS_PER_ROUND = 64
SELECT_SECONDS = 1.0
MAX_PATH_BYTES = 107
_PEERCRED = struct.Struct("3i")


@dataclass
class Connection:
    """One stream client and its incomplete line."""

    sock: socket.socket
    splitter: LineSplitter
    peer_pid: int | None
    last_active: float = field(default_factory=time.monotonic)  # when it last sent a byte


class UnixSocketSource(Worker):
    """Listens on one ``type: unix_socket`` source's socket in a thread of its own."""

    activity = "reading"

    def __init__(
        self,
        config: SocketSourceConfig,
        spool: Spool,
        processor: LineProcessor,
        metrics: Metrics,
    ) -> None:
        super().__init__(f"source-{config.name}", {"source": config.name})
        self.name = config.name
        self.config = config
        self.spool = spool
        self.processor = processor
        self.started = threading.Event()
        self.connections: dict[int, Connection] = {}  # by file descriptor
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._unkept: NewSegment | None = None  # read and processed, not yet in the spool
        self._commit_bytes = commit_bytes(spool.max_bytes)
        size = max(DATAGRAM_BYTES, config.max_line_bytes + 1) if config.mode == "datagram" else 0
        self._datagram = bytearray(size)
        self._turn = 0
        self._lines = metrics.source_lines.labels(source=self.name)
        self._bytes = metrics.source_bytes.labels(source=self.name)
        self._fragments = metrics.socket_fragments_dropped.labels(source=self.name)
        self._refused = metrics.socket_connections_refused.labels(source=self.name)
        self._open = metrics.socket_connections.labels(source=self.name)
        self._idle_closed = metrics.socket_idle_closed.labels(source=self.name)
        self._errors = {
            reason: metrics.source_errors.labels(source=self.name, reason=reason)
            for reason in ERROR_REASONS
        }
        self._refused_log = ThrottledWarning(
            log, "Too many connections; a new one was closed at once"
        )
        self._fragment_log = ThrottledWarning(
            log, "A client went away in the middle of a line; it is lost"
        )
        self._truncated_log = ThrottledWarning(
            log, "A datagram was longer than the receive buffer; the line cut at its end is lost"
        )
        self._idle_log = ThrottledWarning(
            log, "Closed a client that sent nothing for longer than idle_timeout"
        )
        self._last_sweep = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (raising ``SourceError`` if the path is taken), then serve."""
        try:
            self._listener, self._bound = open_socket(self.config)
        except SourceError:
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            raise
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        log.info(
            "Listening on a UNIX socket",
            extra=fields(source=self.name, path=self.config.path, mode=self.config.mode),
        )
        super().start()
        self.started.set()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer: the loop is awake already
            self._wake_w.send(b"\0")

    def teardown(self) -> None:
        self._close_all()

    def step(self) -> bool:
        """Read a round (unless the last one is still waiting for room), then keep it."""
        if self.stopping:
            return False
        if self._unkept is None:
            self._serve_round()
        self._keep()
        return True

    # -- reading ----------------------------------------------------------------------

    def _serve_round(self) -> None:
        """Wait for something to read, read one round, and process its lines."""
        ready = self._selector.select(SELECT_SECONDS)
        if len(ready) > 1:  # a different first reader each round: none is starved
            self._turn = (self._turn + 1) % len(ready)
            ready = ready[self._turn :] + ready[: self._turn]
        lines: list[bytes] = []
        received = 0
        self._close_idle({key.fd for key, _ in ready})
        for key, _ in ready:
            budget = self._commit_bytes - received
            if budget <= 0:
                break
            if key.fileobj is self._wake_r:
                self._drain_wake()
            elif isinstance(key.data, Connection):
                received += self._read_connection(key.data, lines, budget)
            elif self.config.mode == "stream":
                self._accept()
            else:
                received += self._read_datagrams(lines, budget)
        if received:
            self._bytes.inc(received)
        if lines:
            self._lines.inc(len(lines))
            self._unkept = self.processor.process(lines)

    def _keep(self) -> None:
        """Append what the last round read; waits while the spool is full (``block``)."""
        segment = self._unkept
        if segment is None:
            return
        kept = self.spool.append(self.name, segment, None, self._stop)
        self._unkept = None
        if not kept:
            log.error(
                "Stopping while the spool was full: events read from the socket are lost",
                extra=fields(source=self.name, events=len(segment)),
            )

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, _address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, say: try again shortly
                self._errors["io"].inc()
                log.warning(
                    "Cannot accept a connection", extra=fields(source=self.name, error=str(exc))
                )
                self.pause(0.1)
                return
            if len(self.connections) >= self.config.max_connections:
                sock.close()
                self._refused.inc()
                self._refused_log.warn(
                    source=self.name, max_connections=self.config.max_connections
                )
                continue
            sock.setblocking(False)
            splitter = LineSplitter(self.config.max_line_bytes, skip_bom=True)
            conn = Connection(sock, splitter, _peer_pid(sock))
            self.connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._open.set(len(self.connections))

    def _read_connection(self, conn: Connection, lines: list[bytes], budget: int) -> int:
        """Read what ``conn`` has, up to ``budget`` bytes; close it at its end."""
        received = 0
        while received < budget and conn.sock.fileno() >= 0:
            try:
                data = conn.sock.recv(min(CHUNK_BYTES, budget - received))
            except BlockingIOError:
                break
            except OSError:  # reset by the peer: like an end of stream
                data = b""
            if not data:
                self._close_connection(conn)
                break
            conn.last_active = time.monotonic()
            received += len(data)
            self._split(conn.splitter, data, lines)
        return received

    def _read_datagrams(self, lines: list[bytes], budget: int) -> int:
        assert self._listener is not None
        buffer, received = self._datagram, 0
        while received < budget:
            try:
                size, _, flags, _ = self._listener.recvmsg_into([buffer])
            except BlockingIOError:
                break
            received += size
            data = bytes(memoryview(buffer)[:size])
            if flags & socket.MSG_TRUNC:  # longer than the buffer: its last line is cut
                cut = data.rfind(b"\n") + 1
                self._fragments.inc()
                self._truncated_log.warn(source=self.name, buffer_bytes=len(buffer))
                data = data[:cut]
            # A datagram is a stream of its own: a BOM at its start is skipped too.
            splitter = LineSplitter(self.config.max_line_bytes, skip_bom=True)
            self._split(splitter, data if data.endswith(b"\n") else data + b"\n", lines)
        return received

    def _split(self, splitter: LineSplitter, data: bytes, lines: list[bytes]) -> None:
        complete, long_lines = splitter.feed(data)
        lines.extend(complete)
        for long_line in long_lines:
            self.processor.reject_too_long(long_line.head, long_line.length)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(64):
                pass

    # -- closing ----------------------------------------------------------------------

    def _close_idle(self, ready: set[int]) -> None:
        """Close stream clients that sent nothing for ``idle_timeout`` (and have nothing
        waiting to be read), so idle clients cannot hold every connection slot."""
        now = time.monotonic()
        limit = self.config.idle_timeout
        if now - self._last_sweep < min(SELECT_SECONDS, limit / 4):
            return
        self._last_sweep = now
        for fd, conn in list(self.connections.items()):
            if fd not in ready and now - conn.last_active >= limit:
                self._idle_closed.inc()
                self._idle_log.warn(source=self.name, idle_timeout=limit, peer_pid=conn.peer_pid)
                self._close_connection(conn)

    def _close_connection(self, conn: Connection) -> None:
        if conn.splitter.pending:
            self._fragments.inc()
            self._fragment_log.warn(
                source=self.name, bytes=conn.splitter.pending, peer_pid=conn.peer_pid
            )
        self._selector.unregister(conn.sock)
        del self.connections[conn.sock.fileno()]
        conn.sock.close()
        self._open.set(len(self.connections))

    def _close_all(self) -> None:
        if self._unkept is not None:
            log.error(
                "Stopping while the spool could not be written: events read are lost",
                extra=fields(source=self.name, events=len(self._unkept)),
            )
        for conn in list(self.connections.values()):
            self._close_connection(conn)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._listener is not None:
            self._listener.close()
            remove_socket_file(self.config.path, self._bound)


# -- the socket file --------------------------------------------------------------------


def _peer_pid(sock: socket.socket) -> int | None:
    """The writer's process id (for logs), where the kernel says it."""
    try:
        pid, _uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (OSError, AttributeError, struct.error):
        return None
    return int(pid)
