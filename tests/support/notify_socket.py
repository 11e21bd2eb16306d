"""A stand-in for systemd's notify socket: a real ``AF_UNIX`` datagram socket, bound by
the test at a path or at an abstract address, recording each datagram with the time it
arrived and the sender's pid (``SCM_CREDENTIALS``, as systemd checks ``NotifyAccess=``).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() when it arrived
    pid: int  # the sender's, from SCM_CREDENTIALS
    fields: dict[str, str]  # KEY=VALUE lines
    raw: bytes


class NotifySocket:
    """Bound at ``path``, or at the abstract address ``\\0tailhook-test-RANDOM`` when
    ``path`` is None; ``env`` is the matching ``NOTIFY_SOCKET`` value."""

    def __init__(
        self, path: Path | None = None, on_datagram: Callable[[Datagram], None] | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if path is None:
            name = f"tailhook-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env = "@" + name
        else:
            self.sock.bind(str(path))
            self.env = str(path)
        self.sock.settimeout(0.2)
        self.datagrams: list[Datagram] = []
        self._on_datagram = on_datagram
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        space = socket.CMSG_SPACE(_UCRED.size)
        while not self._closed.is_set():
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(65536, space)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            datagram = Datagram(time.monotonic(), pid, fields, data)
            if self._on_datagram is not None:
                self._on_datagram(datagram)
            with self._changed:
                self.datagrams.append(datagram)
                self._changed.notify_all()

    def wait_for(self, key: str, timeout: float = 20.0, value: str | None = None) -> Datagram:
        """The first datagram carrying ``key`` (with ``value``, if given)."""

        def found() -> Datagram | None:
            for datagram in self.datagrams:
                if key in datagram.fields and value in (None, datagram.fields[key]):
                    return datagram
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None, timeout)
            datagram = found()
        if datagram is None:
            raise AssertionError(f"no {key} within {timeout}s; got {self.raw()}")
        return datagram

    def wait_count(self, key: str, count: int, timeout: float = 20.0) -> list[Datagram]:
        """Wait until ``count`` datagrams carry ``key``; all of them."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.with_key(key)) >= count, timeout)
            found = self.with_key(key)
        if len(found) < count:
            raise AssertionError(f"{len(found)} {key} of {count} within {timeout}s")
        return found

    def with_key(self, key: str) -> list[Datagram]:
        return [datagram for datagram in list(self.datagrams) if key in datagram.fields]

    def raw(self) -> list[bytes]:
        return [datagram.raw for datagram in list(self.datagrams)]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
