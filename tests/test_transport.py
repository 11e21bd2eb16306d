"""The HTTP exchange against raw loopback servers that write exactly the bytes a test
wants: interim answers, a status line trickled a byte at a time, an answer cut short, a
keep-alive the server ends, an attempt cut by ``retry.max_elapsed`` (CONTRACT §3, §6)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import BatchConfig, RetryConfig, TLSConfig, WebhookConfig
from agent.errors import DeliveryError
from agent.sinks.transport import BODY_READ_LIMIT, Transport
from agent.spool import NewSegment
from tests.delivery_support import Running, hit, running_sinks
from tests.support.netfaults import (
    FullBacklogListener,
    RawConnection,
    RawServer,
    SilentServer,
)
from tests.support.receiver import Receiver, Response, TLSMaterial, sequence, server_context

ALL = frozenset({"hit", "vulnerability", "system", "scope"})
ONE_EACH = BatchConfig(max_events=1, max_wait=0.01)
QUICK_RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=60)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1"}


def webhook(url: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(name="soc", url=url, events=ALL, batch=ONE_EACH, retry=QUICK_RETRY)
    return replace(base, **settings)  # type: ignore[arg-type]


def count(run: Running, name: str, **labels: str) -> float:
    return run.value(name, webhook="soc", **labels)


def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- interim answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 102 Processing\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"],
        [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 102 Processing\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        ],
    ],
    ids=["102", "103", "100-102-103"],
)
def test_interim_answers_are_skipped_and_the_final_status_decides(
    tmp_path: Path, interim: list[bytes]
) -> None:
    def serve(conn: RawConnection) -> None:
        while conn.read_request() is not None:
            for answer in interim:
                conn.send(answer)
            conn.send(OK)

    with RawServer(serve) as server:
        with running_sinks(tmp_path, [webhook(server.url)], [hit(1), hit(2)]) as run:
            wait_until(
                lambda: (
                    count(run, "tailhook_webhook_events_delivered_total", event_type="hit") == 2
                ),
                5,
                "both batches to be delivered",
            )
            assert count(run, "tailhook_webhook_requests_total", code="200") == 2
            assert count(run, "tailhook_webhook_retries_total") == 0
        # Both requests went over one kept-alive connection: nothing was left unread.
        assert [len(conn.requests) for conn in server.connections] == [2]
    assert not (tmp_path / "dead-letter").exists()


# --- one deadline for the whole exchange ----------------------------------------------

SLOW_HEAD = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200 + b"\r\nContent-Length: 0\r\n\r\n"


def trickle_the_status_line(conn: RawConnection) -> None:
    """A byte every 0.1 s: every read gets something long before any read timeout."""
    if conn.read_request() is not None:
        conn.trickle(SLOW_HEAD, 0.1)


def assert_times_out_in(transport: Transport, low: float, high: float) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        transport.send(b"[]", HEADERS)
    took = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert low <= took < high, took


def test_a_status_line_trickled_a_byte_at_a_time_times_out() -> None:
    with RawServer(trickle_the_status_line) as server:
        transport = Transport(webhook(server.url, request_timeout=1.0))
        try:
            assert_times_out_in(transport, 0.9, 2.0)
        finally:
            transport.close()


def test_a_status_line_trickled_over_tls_times_out(tls_material: TLSMaterial) -> None:
    tls = TLSConfig(ca_file=str(tls_material.ca_cert))
    with RawServer(trickle_the_status_line, tls=server_context(tls_material)) as server:
        transport = Transport(webhook(server.url, request_timeout=1.0, tls=tls))
        try:
            assert_times_out_in(transport, 0.9, 2.0)
        finally:
            transport.close()


def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    silent_server: SilentServer,
) -> None:
    # TCP connects; the server never says a word of TLS.
    url = silent_server.url.replace("http://", "https://")
    transport = Transport(webhook(url, connect_timeout=0.5, request_timeout=30))
    try:
        assert_times_out_in(transport, 0.4, 1.5)
    finally:
        transport.close()


def test_the_deadline_can_be_cut_shorter(silent_server: SilentServer) -> None:
    transport = Transport(webhook(silent_server.url, request_timeout=30))
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            transport.send(b"[]", HEADERS, cut=started + 0.5)
        assert caught.value.kind == "timeout"
        assert time.monotonic() - started < 1.5
    finally:
        transport.close()


# --- connections are reused only when the answer was read to its end --------------------


def test_an_answer_cut_short_is_never_read_by_the_next_request(tmp_path: Path) -> None:
    def serve(conn: RawConnection) -> None:
        if conn.number > 1:
            while conn.read_request() is not None:
                conn.send(OK)
            return
        conn.read_request()
        # 10 of 100 body bytes, then silence past the request timeout ...
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        # ... and should a request come on this connection still, the rest of the old
        # answer, then an answer of its own: whoever reads it reads the leftovers.
        if conn.read_request(timeout=5) is not None:
            conn.send(b"y" * 90 + OK)

    with RawServer(serve) as server:
        hook = webhook(server.url, request_timeout=0.5)
        with running_sinks(tmp_path, [hook], [hit(1)]) as run:
            wait_until(
                lambda: (
                    count(run, "tailhook_webhook_events_delivered_total", event_type="hit") == 1
                ),
                5,
                "the batch to be delivered",
            )
            assert count(run, "tailhook_webhook_requests_total", code="timeout") == 1
            assert count(run, "tailhook_webhook_requests_total", code="connection") == 0
            assert count(run, "tailhook_webhook_requests_total", code="200") == 1
        assert [len(conn.requests) for conn in server.connections] == [1, 1]


def test_an_answer_left_unread_is_never_read_by_the_next_request() -> None:
    # A 2 MiB answer body, of which the server sends only what the transport reads
    # (past 1 MiB it stops), then waits: nothing is left to read on the connection, yet
    # the answer is not over, and the next request must not go over that connection.
    limit = BODY_READ_LIMIT + 1
    rest = 2 * BODY_READ_LIMIT - limit

    def serve(conn: RawConnection) -> None:
        if conn.number > 1:
            while conn.read_request() is not None:
                conn.send(OK)
            return
        conn.read_request()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * BODY_READ_LIMIT)
        conn.send(head + b"x" * limit)
        if conn.read_request(timeout=5) is not None:
            conn.send(b"y" * rest + OK)

    with RawServer(serve) as server:
        transport = Transport(webhook(server.url))
        try:
            first = transport.send(b"[1]", HEADERS)
            second = transport.send(b"[2]", HEADERS)
        finally:
            transport.close()
        assert (first.status, first.body_head[:3]) == (200, b"xxx")
        assert (second.status, second.body_head) == (200, b"ok")
        assert [len(conn.requests) for conn in server.connections] == [1, 1]


def test_a_keep_alive_the_server_ended_is_not_a_failed_attempt(tmp_path: Path) -> None:
    closed = threading.Event()

    def serve(conn: RawConnection) -> None:
        if conn.read_request() is not None:
            conn.send(OK)  # a keep-alive answer (HTTP/1.1, no "Connection: close") ...
        conn.sock.close()  # ... and yet the server closes the connection
        closed.set()

    with RawServer(serve) as server:
        with running_sinks(tmp_path, [webhook(server.url)], [hit(1)]) as run:
            delivered = "tailhook_webhook_events_delivered_total"
            wait_until(lambda: count(run, delivered, event_type="hit") == 1, 5, "a delivery")
            assert closed.wait(5)
            run.spool.append("test", NewSegment.of([hit(2)]))
            wait_until(lambda: count(run, delivered, event_type="hit") == 2, 5, "a delivery")
            assert count(run, "tailhook_webhook_requests_total", code="connection") == 0
            assert count(run, "tailhook_webhook_requests_total", code="200") == 2
        assert server.accepted == 2


def test_the_request_line_host_and_body_are_sent_as_configured() -> None:
    seen: list[bytes] = []

    def serve(conn: RawConnection) -> None:
        while (request := conn.read_request()) is not None:
            seen.append(request)
            conn.send(OK)

    with RawServer(serve) as server:
        transport = Transport(webhook(server.url + "?a=1&b=2"))
        try:
            assert transport.send(b"[1]", HEADERS).status == 200
        finally:
            transport.close()
    head = seen[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /hook?a=1&b=2 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert seen[0].endswith(b"\r\n\r\n[1]")


# --- retry.max_elapsed cuts an attempt in flight ---------------------------------------


def expired_within(run: Running, seconds: float) -> float:
    started = time.monotonic()
    wait_until(
        lambda: count(run, "tailhook_webhook_events_dead_lettered_total", reason="expired") == 1,
        seconds,
        "the batch to expire",
    )
    return time.monotonic() - started


def test_max_elapsed_ends_an_attempt_that_hangs(
    tmp_path: Path, silent_server: SilentServer
) -> None:
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=1.0)
    hook = webhook(silent_server.url, request_timeout=30, retry=retry)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        assert expired_within(run, 3.0) < 1.6
        assert count(run, "tailhook_webhook_requests_total", code="timeout") == 1
    assert silent_server.accepted == 1


def test_max_elapsed_ends_a_connect_that_hangs(
    tmp_path: Path, full_backlog: FullBacklogListener
) -> None:
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=1.0)
    hook = webhook(full_backlog.url, connect_timeout=30, request_timeout=30, retry=retry)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        assert expired_within(run, 3.0) < 1.6
        assert count(run, "tailhook_webhook_requests_total", code="timeout") == 1


def test_an_answer_sent_before_the_body_was_read_is_still_read() -> None:
    # A server refusing a body too large answers as soon as it has the head, and closes
    # with the body unread: sending fails (a reset), but its answer is there to read.
    def serve(conn: RawConnection) -> None:
        conn.sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.sock.recv(65536)
        conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        conn.hold(0.3)

    with RawServer(serve) as server:
        transport = Transport(webhook(server.url))
        try:
            answer = transport.send(b"x" * (16 << 20), HEADERS)
        finally:
            transport.close()
    assert (answer.status, answer.body_head) == (413, b"too big!")


def test_an_attempt_cut_at_expiry_leaves_the_last_answer_in_the_dead_letter(
    tmp_path: Path,
) -> None:
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=1.0)
    busy = Response(503, body=b"busy, try later")
    with Receiver(sequence(busy, then=Response(200, delay=10))) as receiver:
        hook = webhook(receiver.url, request_timeout=30, retry=retry)
        with running_sinks(tmp_path, [hook], [hit(1)]) as run:
            assert expired_within(run, 3.0) < 1.6
            assert count(run, "tailhook_webhook_requests_total", code="timeout") == 1
        assert len(receiver.requests) == 2
    (line,) = (tmp_path / "dead-letter" / "soc.jsonl").read_bytes().splitlines()
    letter = json.loads(line)
    assert (letter["reason"], letter["status"], letter["response"]) == (
        "expired",
        503,
        "busy, try later",
    )
