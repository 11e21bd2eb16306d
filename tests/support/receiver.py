"""A real webhook receiver on loopback, and the TLS material to serve it over HTTPS.

`Receiver` is an `http.server.ThreadingHTTPServer` on ``127.0.0.1:0`` that records every
request it is sent (`RecordedRequest`) and answers it as its script says (`Response`),
the way Vector's sink tests run a hyper server that answers 500 twice, then 200. It
speaks HTTP/1.1 with keep-alive, over plain TCP or TLS (optionally requiring a client
certificate). The TLS handshake runs in the connection's own thread, so a client that
connects and never handshakes holds up nobody; a connection whose handshake fails is
counted in `Receiver.handshake_failures` and never reaches `Receiver.requests`.

`make_tls_material` writes a trustme CA, a server certificate for ``127.0.0.1`` and
``localhost``, a client certificate, and a client certificate from another CA.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import trustme

LOOPBACK = "127.0.0.1"
DEFAULT_PATH = "/hook"


class Headers(Mapping[str, str]):
    """Request headers in the order received; lookups ignore case (first value wins)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.pairs if key.lower() == wanted]

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self.pairs:
            if key.lower() not in seen:
                seen.add(key.lower())
                yield key

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self.pairs})

    def __repr__(self) -> str:
        return f"Headers({list(self.pairs)!r})"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the receiver read it, before it answered."""

    method: str
    path: str
    headers: Headers
    body: bytes
    received_at: float  # time.time() when the body had been read
    received_monotonic: float  # time.monotonic() at the same moment
    client_address: tuple[str, int]
    connection: int  # 1, 2, ... per accepted connection: equal ids mean keep-alive reuse
    peer_cert: dict[str, Any] | None = None  # ssl.SSLSocket.getpeercert() when verified
    peer_cert_der: bytes | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    """What the receiver answers: after `delay` seconds, `status` with `body`.

    `drop="close"` closes the connection without answering (a clean FIN) and
    `drop="reset"` aborts it (an RST), both after `delay`.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: Literal["close", "reset"] | None = None


# Called with the recorded request and its 0-based index among all requests received.
Script = Callable[[RecordedRequest, int], Response]


def sequence(*answers: int | Response, then: int | Response = 200) -> Script:
    """A script answering the n-th request with answers[n], and `then` after them.

    ``sequence(503, 503)`` is "503 twice, then 200".
    """
    responses = [_as_response(answer) for answer in answers]
    after = _as_response(then)
    return lambda _request, n: responses[n] if n < len(responses) else after


def delayed(seconds: float, status: int = 200) -> Script:
    """A script that waits `seconds` before answering every request with `status`."""
    return lambda _request, _n: Response(status, delay=seconds)


def _as_response(answer: int | Response) -> Response:
    return answer if isinstance(answer, Response) else Response(answer)


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def __init__(
        self,
        request: socket.socket,
        client_address: tuple[str, int],
        server: Receiver,
        *,
        connection_id: int,
    ) -> None:
        self.connection_id = connection_id
        super().__init__(request, client_address, server)

    def handle_request(self) -> None:
        body = self._read_body()
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=Headers(list(self.headers.items())),
            body=body,
            received_at=time.time(),
            received_monotonic=time.monotonic(),
            client_address=self.client_address,
            connection=self.connection_id,
            **self._peer_certificate(),
        )
        response = self.server._record_and_script(record)
        if response.delay and self.server._closing.wait(response.delay):
            response = Response(drop="close")  # closing: do not answer
        if response.drop is not None:
            self.close_connection = True
            if response.drop == "reset":
                self.server._abort_on_finish(self.connection_id)
            return
        self._answer(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _peer_certificate(self) -> dict[str, Any]:
        if not isinstance(self.connection, ssl.SSLSocket):
            return {}
        return {
            "peer_cert": self.connection.getpeercert() or None,
            "peer_cert_der": self.connection.getpeercert(binary_form=True),
        }

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        names = {name.lower() for name in response.headers}
        for name, value in response.headers.items():
            self.send_header(name, value)
        has_body = response.status >= 200 and response.status not in (204, 304)
        if has_body and "content-length" not in names:
            self.send_header("Content-Length", str(len(response.body)))
        if not self.server.keep_alive and "connection" not in names:
            self.send_header("Connection", "close")
        self.end_headers()
        if has_body and self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Receiver(http.server.ThreadingHTTPServer):
    """A recording HTTP(S) server on 127.0.0.1, serving in daemon threads until `close`.

    `answer` is a status or `Response` for every request, or a `Script`; `answer_with`
    changes it.
    With `tls`, connections are TLS; `require_client_cert=True` sets the context's
    verify mode to CERT_REQUIRED (the context must already trust the client CA, as
    `server_context` does). Use as a context manager or call `close()`.
    """

    daemon_threads = True
    block_on_close = False  # close() joins the connection threads itself, with a bound

    def __init__(
        self,
        answer: int | Response | Script = 200,
        *,
        tls: ssl.SSLContext | None = None,
        require_client_cert: bool = False,
        keep_alive: bool = True,
        idle_timeout: float | None = None,
        handshake_timeout: float = 10.0,
        path: str = DEFAULT_PATH,
    ) -> None:
        if require_client_cert:
            if tls is None or not tls.get_ca_certs():
                raise ValueError("require_client_cert needs a TLS context that trusts a CA")
            tls.verify_mode = ssl.CERT_REQUIRED
        self.tls = tls
        self.keep_alive = keep_alive
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.path = path
        self._script = self._as_script(answer)
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._handshake_failures: list[str] = []
        self._connections: dict[int, socket.socket] = {}
        self._to_abort: set[int] = set()
        self._connection_threads: list[threading.Thread] = []
        self._connection_ids = itertools.count(1)
        self._closing = threading.Event()
        super().__init__((LOOPBACK, 0), _ReceiverHandler)  # type: ignore[arg-type]
        self._serve_thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()

    # --- what tests use -------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}{self.path}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def handshake_failures(self) -> list[str]:
        """One line per connection whose TLS handshake failed: ``"host:port: error"``."""
        with self._cond:
            return list(self._handshake_failures)

    def bodies_json(self) -> list[Any]:
        return [request.json() for request in self.requests]

    def answer_with(self, answer: int | Response | Script) -> None:
        """Answer from now on with `answer`; n keeps counting from all earlier requests."""
        with self._cond:
            self._script = self._as_script(answer)

    def wait_for(
        self, condition: int | Callable[[list[RecordedRequest]], bool], timeout: float = 5.0
    ) -> bool:
        """Wait until `condition` (a request count, or a predicate on the requests) holds."""
        if isinstance(condition, int):
            count = condition
            return self._wait(lambda: len(self._requests) >= count, timeout)
        predicate = condition
        return self._wait(lambda: predicate(list(self._requests)), timeout)

    def wait_for_handshake_failures(self, count: int = 1, timeout: float = 5.0) -> bool:
        return self._wait(lambda: len(self._handshake_failures) >= count, timeout)

    def close(self) -> None:
        """Stop accepting, cut open connections and wait (boundedly) for their threads."""
        if self._closing.is_set():
            return
        self._closing.set()
        self.shutdown()
        self.server_close()
        with self._cond:
            connections = list(self._connections.values())
            threads = list(self._connection_threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)  # wakes a blocked reader
        deadline = time.monotonic() + 5.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._serve_thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- socketserver plumbing ------------------------------------------------------

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skips HTTPServer's reverse DNS lookup
        self.server_name = LOOPBACK
        self.server_port = self.port

    def process_request(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        with self._cond:
            if self._closing.is_set():
                self.shutdown_request(request)
                return
            connection_id = next(self._connection_ids)
            self._connections[connection_id] = request
            self._connection_threads = [t for t in self._connection_threads if t.is_alive()]
            thread = threading.Thread(
                target=self._serve_connection,
                args=(request, client_address, connection_id),
                name=f"receiver-{self.port}-conn-{connection_id}",
                daemon=True,
            )
            self._connection_threads.append(thread)
        thread.start()

    def _serve_connection(
        self, conn: socket.socket, client_address: tuple[str, int], connection_id: int
    ) -> None:
        try:
            if self.tls is not None:
                conn = self._handshake(conn, client_address, connection_id)
            conn.settimeout(self.idle_timeout)
            _ReceiverHandler(conn, client_address, self, connection_id=connection_id)
        except (ConnectionError, TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            pass  # the client went away, idled out, or failed the TLS handshake
        except OSError:
            if not self._closing.is_set():
                raise  # anything else fails the test, through pytest's thread hook
        finally:
            with self._cond:
                self._connections.pop(connection_id, None)
                abort = connection_id in self._to_abort
            if abort:
                with contextlib.suppress(OSError):  # linger 0: close() sends an RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self.shutdown_request(conn)

    def _handshake(
        self, raw: socket.socket, client_address: tuple[str, int], connection_id: int
    ) -> ssl.SSLSocket:
        assert self.tls is not None
        try:
            conn = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        with self._cond:
            self._connections[connection_id] = conn
        try:
            conn.settimeout(self.handshake_timeout)
            conn.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            with self._cond:
                self._handshake_failures.append(f"{client_address[0]}:{client_address[1]}: {exc}")
                self._cond.notify_all()
            conn.close()
            raise ConnectionAbortedError("TLS handshake failed") from exc
        return conn

    def _abort_on_finish(self, connection_id: int) -> None:
        with self._cond:
            self._to_abort.add(connection_id)

    def _record_and_script(self, record: RecordedRequest) -> Response:
        with self._cond:
            n = len(self._requests)
            self._requests.append(record)
            self._cond.notify_all()
            script = self._script
        return script(record, n)

    def _wait(self, satisfied: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(satisfied, timeout)

    @staticmethod
    def _as_script(answer: int | Response | Script) -> Script:
        if isinstance(answer, int | Response):
            response = _as_response(answer)
            return lambda _request, _n: response
        return answer


# --- TLS material ---------------------------------------------------------------------


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files under `directory`, made by `make_tls_material`."""

    directory: Path
    ca_cert: Path  # ca.pem: the CA that signed the server and client certificates
    server_cert: Path  # server.pem: chain for 127.0.0.1 and localhost
    server_key: Path  # server.key
    client_pem: Path  # client.pem: client key and certificate chain in one file
    client_cert: Path  # client.crt: client certificate chain alone
    client_key: Path  # client.key
    other_ca_cert: Path  # other-ca.pem: a CA nobody here trusts
    other_client_pem: Path  # other-client.pem: key and chain signed by the other CA
    ca: trustme.CA = field(repr=False, compare=False)
    other_ca: trustme.CA = field(repr=False, compare=False)


CLIENT_IDENTITY = "client.tailhook.test"


def make_tls_material(directory: Path) -> TLSMaterial:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert(LOOPBACK, "localhost")
    client = ca.issue_cert(CLIENT_IDENTITY)
    other_client = other_ca.issue_cert(CLIENT_IDENTITY)
    material = TLSMaterial(
        directory=directory,
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_pem=directory / "client.pem",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca_cert=directory / "other-ca.pem",
        other_client_pem=directory / "other-client.pem",
        ca=ca,
        other_ca=other_ca,
    )
    ca.cert_pem.write_to_path(str(material.ca_cert))
    _write_chain(server, material.server_cert)
    server.private_key_pem.write_to_path(str(material.server_key))
    client.private_key_and_cert_chain_pem.write_to_path(str(material.client_pem))
    _write_chain(client, material.client_cert)
    client.private_key_pem.write_to_path(str(material.client_key))
    other_ca.cert_pem.write_to_path(str(material.other_ca_cert))
    other_client.private_key_and_cert_chain_pem.write_to_path(str(material.other_client_pem))
    return material


def _write_chain(cert: trustme.LeafCert, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))


def server_context(material: TLSMaterial) -> ssl.SSLContext:
    """A server context with the server certificate, trusting `material.ca` for clients.

    Client certificates are not requested until a `Receiver` is made with
    ``require_client_cert=True``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(material.server_cert, material.server_key)
    context.load_verify_locations(cafile=material.ca_cert)
    return context
