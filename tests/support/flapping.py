"""A webhook receiver that comes and goes on one loopback port: refused connections.

`FlappingReceiver` owns a port on 127.0.0.1 for its whole life. `up()` serves it with a
recording `Receiver` (the same scripts, `Response`s and recordings); `down()` closes that
server, cutting every open connection, and leaves the port bound but not listening, so a
connect is refused (RST) rather than hanging, and no other socket (an outgoing
connection's ephemeral port, say) can take the port meanwhile. Every request any of its
servers recorded is kept, in order, with the answer the script chose for it.

`start_flapping` takes it down and back up at random moments from a thread of its own
until `stop_flapping`, which leaves it up.

Everything binds 127.0.0.1 only; `close()` (or leaving the ``with`` block) closes it all.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from tests.support.receiver import LOOPBACK, Receiver, RecordedRequest, Response, Script

BIND_ATTEMPTS = 50


@dataclass(frozen=True)
class Exchange:
    """One recorded request and the answer the script chose for it (which may not have
    reached the client: it can time out, or the server can go down, before it is sent)."""

    request: RecordedRequest
    response: Response

    @property
    def complete(self) -> bool:
        """The whole body arrived. A client killed while sending leaves a request whose
        body is cut short, which the receiver records (and answers) all the same."""
        length = self.request.headers.get("Content-Length")
        return length is not None and int(length) == len(self.request.body)


class _PinnedReceiver(Receiver):
    """A `Receiver` on a given port instead of an ephemeral one."""

    def __init__(self, port: int, answer: Script) -> None:
        self._pinned_port = port
        super().__init__(answer)

    def server_bind(self) -> None:
        self.server_address = (LOOPBACK, self._pinned_port)
        super().server_bind()  # SO_REUSEADDR: HTTPServer.allow_reuse_address


class FlappingReceiver:
    """A recording receiver on a fixed loopback port that can be taken down and back up.

    It starts down (refusing) unless ``up=True``. `answer_with` sets the script for every
    request from now on; a script is called with the request and its 0-based index among
    all requests this receiver recorded, across ups and downs.
    """

    def __init__(self, answer: int | Response | Script = 200, *, up: bool = False) -> None:
        self._cond = threading.Condition()
        self._script = _as_script(answer)
        self._exchanges: list[Exchange] = []
        self._server: _PinnedReceiver | None = None
        self._placeholder: socket.socket | None = self._hold(0)
        self.port: int = self._placeholder.getsockname()[1]
        self._closed = False
        self._flapper: threading.Thread | None = None
        self._flapping = threading.Event()
        self._flap_error: Exception | None = None
        self.downs = 0  # how many times flapping took it down
        if up:
            self.up()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def exchanges(self) -> list[Exchange]:
        with self._cond:
            return list(self._exchanges)

    @property
    def requests(self) -> list[RecordedRequest]:
        return [exchange.request for exchange in self.exchanges]

    def answer_with(self, answer: int | Response | Script) -> None:
        with self._cond:
            self._script = _as_script(answer)

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float) -> bool:
        """Wait until `predicate` holds for the requests recorded so far."""
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate([e.request for e in self._exchanges]), timeout
            )

    def wait_for_exchanges(
        self, predicate: Callable[[list[Exchange]], bool], timeout: float
    ) -> bool:
        """Wait until `predicate` holds for the exchanges recorded so far."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(list(self._exchanges)), timeout)

    def up(self) -> None:
        """Listen on the port again (no-op when already up)."""
        if self._closed or self._server is not None:
            return
        for attempt in range(BIND_ATTEMPTS):
            if self._placeholder is not None:
                self._placeholder.close()
                self._placeholder = None
            try:
                self._server = _PinnedReceiver(self.port, self._answer)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                    raise
            time.sleep(0.02)

    def down(self) -> None:
        """Stop listening and cut open connections; connects are refused until `up`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._placeholder is None and not self._closed:
            self._placeholder = self._hold(self.port)

    def start_flapping(
        self,
        rng: random.Random,
        up_for: tuple[float, float] = (0.5, 3.0),
        down_for: tuple[float, float] = (0.1, 1.0),
    ) -> None:
        """From now on, stay up for ``rng.uniform(*up_for)`` s, then down (refusing) for
        ``rng.uniform(*down_for)`` s, over and over, until `stop_flapping`."""
        assert self._flapper is None, "already flapping"
        self._flapping.set()
        self._flapper = threading.Thread(
            target=self._flap, args=(rng, up_for, down_for), name="flapper", daemon=True
        )
        self._flapper.start()

    def stop_flapping(self) -> None:
        """Stop flapping and stay up; raises what went wrong in the flapping thread."""
        self._flapping.clear()
        flapper, self._flapper = self._flapper, None
        if flapper is not None:
            flapper.join(15)
        self.up()
        error, self._flap_error = self._flap_error, None
        if error is not None:
            raise error

    def _flap(
        self, rng: random.Random, up_for: tuple[float, float], down_for: tuple[float, float]
    ) -> None:
        try:
            while self._flapping.is_set():
                self.up()
                if self._sleep_flapping(rng.uniform(*up_for)):
                    break
                self.down()
                self.downs += 1
                self._sleep_flapping(rng.uniform(*down_for))
        except Exception as exc:  # noqa: BLE001 (stop_flapping raises it)
            self._flap_error = exc

    def _sleep_flapping(self, seconds: float) -> bool:
        """Sleep while flapping; True if flapping stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while self._flapping.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return not self._flapping.is_set()

    def close(self) -> None:
        self._flapping.clear()
        if self._flapper is not None:
            self._flapper.join(15)
            self._flapper = None
        self.down()
        self._closed = True
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _answer(self, request: RecordedRequest, _n: int) -> Response:
        with self._cond:
            n = len(self._exchanges)
            response = self._script(request, n)
            self._exchanges.append(Exchange(request, response))
            self._cond.notify_all()
        return response

    @staticmethod
    def _hold(port: int) -> socket.socket:
        """A socket bound to the port and not listening: it keeps the port, refusing."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for attempt in range(BIND_ATTEMPTS):
                try:
                    sock.bind((LOOPBACK, port))
                    return sock
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                        raise
                time.sleep(0.02)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        raise AssertionError("unreachable")


def _as_script(answer: int | Response | Script) -> Script:
    if callable(answer):
        return answer
    response = answer if isinstance(answer, Response) else Response(answer)
    return lambda _request, _n: response
