"""Misbehaving peers on loopback, for the ways a webhook fails below HTTP.

- `SilentServer`: accepts and reads, never answers (a request timeout).
- `TricklingServer`: answers the status line and headers, then sends the body one byte
  per `interval`, forever (a request that only a total deadline can end).
- `FullBacklogListener`: listens, never accepts, and has its accept queue filled, so a
  new connect hangs (a connect timeout).
- `RawServer`: each connection served by a function that writes exactly the bytes it
  wants (interim answers, a status line trickled a byte at a time, a body cut short),
  over TCP or TLS; connections are numbered, so a test sees which one a request used.
- `closed_port` / `refusing_port`: nothing listening (connection refused).

Everything binds 127.0.0.1 only and runs in daemon threads; `close()` (or leaving the
``with`` block) closes every socket it opened.
"""

from __future__ import annotations

import contextlib
import errno
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Self

LOOPBACK = "127.0.0.1"


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and reads whatever comes, never answering.

    A connection is closed only when the client closes it or at `close()`.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._clients: dict[socket.socket, bytearray] = {}
        self._cond = threading.Condition()
        self._accepted = 0
        self._bytes_received = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"{type(self).__name__}-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        with self._cond:
            return self._accepted

    @property
    def bytes_received(self) -> int:
        with self._cond:
            return self._bytes_received

    def wait_for_connections(self, count: int = 1, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._accepted >= count, timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_writer.send(b"x")
        self._thread.join(5.0)
        for client in list(self._clients):
            client.close()
        self._clients.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the event loop, with hooks for subclasses ------------------------------------

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select(self._seconds_to_next_tick()):
                if key.fileobj is self._wake_reader:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._read(key.fileobj)
            self._tick(time.monotonic())

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                client, _ = self._listener.accept()
                client.setblocking(False)
                self._clients[client] = bytearray()
                self._selector.register(client, selectors.EVENT_READ)
                with self._cond:
                    self._accepted += 1
                    self._cond.notify_all()

    def _read(self, client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        with self._cond:
            self._bytes_received += len(data)
        self._received(client, data)

    def _drop(self, client: socket.socket) -> None:
        self._selector.unregister(client)
        self._clients.pop(client, None)
        client.close()

    def _received(self, client: socket.socket, data: bytes) -> None:
        pass  # silent: read and forget

    def _seconds_to_next_tick(self) -> float | None:
        return None

    def _tick(self, now: float) -> None:
        pass


class TricklingServer(SilentServer):
    """Answers each connection's first request with a 200 status line and headers
    (``Content-Length: 1000000``), then one body byte per `interval` seconds, forever.

    Each byte arrives well inside any per-read timeout longer than `interval`, so a
    client whose only limits are connect and read timeouts (`requests`' ``timeout=``)
    never finishes. Only a deadline on the whole request ends it.
    """

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next_byte_at: dict[socket.socket, float] = {}
        self._bytes_sent = 0
        super().__init__()

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent so far, over all connections."""
        with self._cond:
            return self._bytes_sent

    def _received(self, client: socket.socket, data: bytes) -> None:
        if client in self._next_byte_at:
            return  # already trickling; ignore anything else the client sends
        buffer = self._clients[client]
        buffer += data
        if b"\r\n\r\n" in buffer:
            self._send(client, self.HEAD)
            self._next_byte_at[client] = time.monotonic() + self.interval

    def _drop(self, client: socket.socket) -> None:
        self._next_byte_at.pop(client, None)
        super()._drop(client)

    def _seconds_to_next_tick(self) -> float | None:
        if not self._next_byte_at:
            return None
        return max(0.0, min(self._next_byte_at.values()) - time.monotonic())

    def _tick(self, now: float) -> None:
        for client, due in list(self._next_byte_at.items()):
            if due <= now and self._send(client, b"x"):
                self._next_byte_at[client] = now + self.interval
                with self._cond:
                    self._bytes_sent += 1

    def _send(self, client: socket.socket, data: bytes) -> bool:
        try:
            return client.send(data) == len(data)
        except BlockingIOError:
            return False
        except OSError:
            self._drop(client)
            return False


class FullBacklogListener:
    """A socket listening on 127.0.0.1 that never accepts, its accept queue kept full.

    What this relies on (Linux): ``listen(0)`` leaves room for one established
    connection in the accept queue (the queue is full when its length *exceeds* the
    backlog). While the queue is full, the kernel drops an incoming SYN outright
    (``tcp_conn_request``: ``sk_acceptq_is_full`` -> drop, counted as ListenOverflows;
    SYN cookies do not change this) instead of answering RST. The client hears nothing
    and retransmits its SYN after 1 s, 3 s, 7 s, ..., so its connect times out rather
    than being refused.

    The constructor fills the queue from the test process itself: it starts
    non-blocking connects one at a time until one does not complete within `settle`
    seconds (its SYN was dropped). Those filler sockets stay open until `close()`.
    Other systems size the queue differently (BSDs take ``1.5 * backlog``; macOS may
    refuse rather than drop), which is why it fills until a connect stalls rather than
    a fixed number of times.
    """

    def __init__(self, max_fill: int = 16, settle: float = 0.2) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._fillers: list[socket.socket] = []
        self.established = 0  # fillers that got into the accept queue
        try:
            self._listener.bind((LOOPBACK, 0))
            self._listener.listen(0)
            self._fill(max_fill, settle)
        except BaseException:
            self.close()
            raise

    def _fill(self, max_fill: int, settle: float) -> None:
        for _ in range(max_fill):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._fillers.append(filler)
            filler.setblocking(False)
            result = filler.connect_ex(self.address)
            if result not in (0, errno.EINPROGRESS):
                raise OSError(result, f"filler connect failed: {errno.errorcode[result]}")
            _, writable, _ = select.select([], [filler], [], settle)
            if not writable:
                return  # SYN dropped: the accept queue is full
            error = filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"filler connect failed: {errno.errorcode[error]}")
            self.established += 1
        raise RuntimeError(f"accept queue still not full after {max_fill} connections")

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    def close(self) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()
        self._fillers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def closed_port() -> int:
    """A loopback port nothing listens on: bound, read, closed. (Another process could
    take it in between; `refusing_port` holds it for the duration instead.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole ``with`` block.

    The port stays bound but never listens: a SYN to it gets an RST (ECONNREFUSED), and
    nothing else can take the port (or be an accidental self-connect) meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


@dataclass
class RawConnection:
    """One accepted connection of a `RawServer`: ``number`` counts from 1 per server."""

    sock: socket.socket
    number: int
    closing: threading.Event
    requests: list[bytes] = field(default_factory=list)  # every request read on it
    _buffer: bytearray = field(default_factory=bytearray)

    def read_request(self, timeout: float = 10.0) -> bytes | None:
        """Read one whole request (head and ``Content-Length`` body); None at EOF."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self._buffer:
            if not self._receive():
                return None
        head_end = self._buffer.index(b"\r\n\r\n") + 4
        length = 0
        for line in bytes(self._buffer[:head_end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < head_end + length:
            if not self._receive():
                return None
        request = bytes(self._buffer[: head_end + length])
        del self._buffer[: head_end + length]
        self.requests.append(request)
        return request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` one byte per ``interval`` seconds, until done or closing."""
        for byte in data:
            if self.closing.wait(interval):
                return
            self.sock.sendall(bytes([byte]))

    def hold(self, seconds: float) -> None:
        """Keep the connection open, silent, for ``seconds`` (or until closing)."""
        self.closing.wait(seconds)

    def _receive(self) -> bool:
        data = self.sock.recv(65536)
        self._buffer += data
        return bool(data)


class RawServer:
    """A TCP (or, with ``tls``, TLS) server on 127.0.0.1 that hands each connection to
    ``serve`` in a thread of its own and closes it when ``serve`` returns."""

    def __init__(
        self, serve: Callable[[RawConnection], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self._serve = serve
        self._tls = tls
        self._listener = socket.create_server((LOOPBACK, 0))
        self._port = int(self._listener.getsockname()[1])
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.connections: list[RawConnection] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}/hook"

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self.connections)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._listener, socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections, threads = list(self.connections), list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
        deadline = time.monotonic() + 5.0
        for thread in [self._acceptor, *threads]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            if self._tls is not None:
                sock.settimeout(10.0)
                sock = self._tls.wrap_socket(sock, server_side=True)
            with self._lock:
                conn = RawConnection(sock, len(self.connections) + 1, self._closing)
                self.connections.append(conn)
            self._serve(conn)
        except (ConnectionError, TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            pass  # the client went away (or gave up): what these servers are for
        except OSError:
            if not self._closing.is_set():
                raise  # fails the test, through pytest's thread hook
        finally:
            sock.close()
