"""The test support code itself, exercised with `requests` as the client."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support import netfaults
from tests.support.receiver import (
    CLIENT_IDENTITY,
    Receiver,
    RecordedRequest,
    Response,
    TLSMaterial,
    delayed,
    sequence,
)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A session that ignores proxy variables from the environment (loopback only)."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


# --- Receiver over HTTP -------------------------------------------------------------


def test_post_is_recorded_with_headers_and_body(receiver: Receiver, http: requests.Session) -> None:
    body = b'[{"summary": "hit"}]'
    response = http.post(
        receiver.url,
        data=body,
        headers={"Content-Type": "application/json", "webhook-id": "msg_1"},
        timeout=5,
    )

    assert response.status_code == 200
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook", body)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["Webhook-Id"] == "msg_1"
    assert request.headers.get_all("WEBHOOK-ID") == ["msg_1"]
    assert request.peer_cert is None
    assert receiver.bodies_json() == [[{"summary": "hit"}]]
    assert abs(request.received_at - time.time()) < 5


def test_keep_alive_serves_several_requests_on_one_connection(
    receiver: Receiver, http: requests.Session
) -> None:
    for i in range(3):
        assert http.post(receiver.url, json={"i": i}, timeout=5).status_code == 200

    assert receiver.bodies_json() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {request.connection for request in receiver.requests} == {1}


def test_chunked_request_body_is_decoded(receiver: Receiver, http: requests.Session) -> None:
    http.post(receiver.url, data=iter([b"[1,", b"2]"]), timeout=5)

    [request] = receiver.requests
    assert request.headers["Transfer-Encoding"] == "chunked"
    assert request.json() == [1, 2]


def test_scripted_503_twice_then_200(receiver: Receiver, http: requests.Session) -> None:
    receiver.answer_with(sequence(Response(503, b"busy", {"Retry-After": "1"}), 503))

    answers = [http.post(receiver.url, json={"n": n}, timeout=5) for n in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].text == "busy"
    assert answers[0].headers["Retry-After"] == "1"
    assert receiver.bodies_json() == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_constant_response_without_body(receiver: Receiver, http: requests.Session) -> None:
    receiver.answer_with(Response(204, headers={"X-Seen": "yes"}))

    response = http.post(receiver.url, json=[1], timeout=5)

    assert (response.status_code, response.content) == (204, b"")
    assert response.headers["X-Seen"] == "yes"


def test_script_sees_the_request_and_its_index(receiver: Receiver, http: requests.Session) -> None:
    def echo(request: RecordedRequest, n: int) -> Response:
        return Response(201, body=f"{n}:{request.body.decode()}".encode())

    receiver.answer_with(echo)

    assert http.post(receiver.url, data=b"a", timeout=5).text == "0:a"
    assert http.post(receiver.url, data=b"b", timeout=5).text == "1:b"


def test_delayed_answer_trips_the_client_read_timeout(
    receiver: Receiver, http: requests.Session
) -> None:
    receiver.answer_with(delayed(2.0))
    started = time.monotonic()

    with pytest.raises(requests.ReadTimeout):
        http.post(receiver.url, data=b"x", timeout=(1, 0.3))

    assert time.monotonic() - started < 1.5
    assert len(receiver.requests) == 1  # recorded on receipt, before the delay


def test_dropped_connections(receiver: Receiver, http: requests.Session) -> None:
    receiver.answer_with(sequence(Response(drop="close"), Response(drop="reset")))

    with pytest.raises(requests.ConnectionError, match=r"RemoteDisconnected|aborted"):
        http.post(receiver.url, data=b"x", timeout=5)
    with pytest.raises(requests.ConnectionError, match=r"reset|aborted"):
        http.post(receiver.url, data=b"y", timeout=5)
    assert http.post(receiver.url, data=b"z", timeout=5).status_code == 200
    assert [r.body for r in receiver.requests] == [b"x", b"y", b"z"]


def test_wait_for_wakes_on_arrival(receiver: Receiver, http: requests.Session) -> None:
    assert not receiver.wait_for(1, timeout=0.05)
    sender = threading.Timer(0.2, lambda: http.post(receiver.url, json=[7], timeout=5))
    sender.start()
    started = time.monotonic()
    try:
        assert receiver.wait_for(lambda got: [7] in [r.json() for r in got], timeout=5)
        assert time.monotonic() - started < 2
    finally:
        sender.join()


def test_close_ends_idle_keep_alive_connections_and_delays(http: requests.Session) -> None:
    with Receiver(delayed(30)) as server:
        outcome: list[BaseException] = []

        def post() -> None:
            try:
                http.post(server.url, data=b"x")
            except requests.ConnectionError as exc:
                outcome.append(exc)

        client = threading.Thread(target=post)
        client.start()
        assert server.wait_for(1)
        started = time.monotonic()
    client.join(5)

    assert not client.is_alive()
    assert time.monotonic() - started < 2
    assert len(outcome) == 1  # the client saw the connection closed, not an answer


# --- HTTPS and mTLS -----------------------------------------------------------------


def test_https_with_the_test_ca(
    https_receiver: Receiver, tls_material: TLSMaterial, http: requests.Session
) -> None:
    assert https_receiver.url.startswith("https://127.0.0.1:")

    response = http.post(https_receiver.url, json=[1], verify=str(tls_material.ca_cert), timeout=5)

    assert response.status_code == 200
    assert https_receiver.bodies_json() == [[1]]


def test_https_with_default_trust_store_fails(
    https_receiver: Receiver, http: requests.Session
) -> None:
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        http.post(https_receiver.url, json=[1], timeout=5)

    assert https_receiver.wait_for_handshake_failures(1)
    assert https_receiver.requests == []


def test_silent_tls_client_does_not_block_others(
    https_receiver: Receiver, tls_material: TLSMaterial, http: requests.Session
) -> None:
    with socket.create_connection(("127.0.0.1", https_receiver.port), timeout=5):
        response = http.post(
            https_receiver.url, json=[1], verify=str(tls_material.ca_cert), timeout=3
        )

    assert response.status_code == 200


def test_mtls_with_client_cert(
    mtls_receiver: Receiver, tls_material: TLSMaterial, http: requests.Session
) -> None:
    response = http.post(
        mtls_receiver.url,
        json=[1],
        verify=str(tls_material.ca_cert),
        cert=(str(tls_material.client_cert), str(tls_material.client_key)),
        timeout=5,
    )
    combined = http.post(
        mtls_receiver.url,
        json=[2],
        verify=str(tls_material.ca_cert),
        cert=str(tls_material.client_pem),
        timeout=5,
    )

    assert (response.status_code, combined.status_code) == (200, 200)
    first, _ = mtls_receiver.requests
    assert first.peer_cert is not None
    assert ("DNS", CLIENT_IDENTITY) in first.peer_cert["subjectAltName"]
    assert first.peer_cert_der


@pytest.mark.parametrize("client_cert", ["none", "other CA"])
def test_mtls_rejects_missing_or_foreign_client_cert(
    mtls_receiver: Receiver, tls_material: TLSMaterial, http: requests.Session, client_cert: str
) -> None:
    cert = None if client_cert == "none" else str(tls_material.other_client_pem)

    # TLS 1.3: the client finishes its side of the handshake before the server checks
    # the client certificate, so the client may see the server's alert (SSLError) or
    # only a reset connection (ConnectionError) when it reads the answer.
    with pytest.raises(requests.ConnectionError):
        http.post(
            mtls_receiver.url, json=[1], verify=str(tls_material.ca_cert), cert=cert, timeout=5
        )

    assert mtls_receiver.wait_for_handshake_failures(1)
    assert mtls_receiver.requests == []


# --- network faults -----------------------------------------------------------------


def test_silent_server_makes_requests_time_out(
    silent_server: netfaults.SilentServer, http: requests.Session
) -> None:
    started = time.monotonic()

    with pytest.raises(requests.ReadTimeout):
        http.post(silent_server.url, json=[1], timeout=(1, 0.5))

    assert time.monotonic() - started < 2
    assert silent_server.accepted == 1
    assert silent_server.bytes_received > 0


def test_trickling_body_outlives_the_read_timeout(http: requests.Session) -> None:
    """`requests`' ``timeout=(connect, read)`` bounds each socket read, not the request.

    A server that sends one byte every 0.2 s keeps a request with a 0.5 s read timeout
    going for as long as it likes: after 2 s (four read timeouts) the request is still
    running, having raised nothing. This is why the agent must enforce its own total
    deadline per request. Closing the server is what ends it here.
    """
    outcome: list[BaseException | requests.Response] = []

    def post() -> None:
        try:
            outcome.append(http.post(server.url, json=[1], timeout=(1, 0.5)))
        except requests.RequestException as exc:
            outcome.append(exc)

    with netfaults.TricklingServer(interval=0.2) as server:
        client = threading.Thread(target=post, daemon=True)
        client.start()
        client.join(2.0)
        assert client.is_alive() and outcome == []
        assert server.bytes_sent >= 5
    client.join(5)

    [error] = outcome
    assert not isinstance(error, requests.Timeout)
    assert isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError)


def test_trickling_server_streams_one_byte_per_interval(http: requests.Session) -> None:
    with netfaults.TricklingServer(interval=0.1) as server:
        response = http.post(server.url, data=b"{}", stream=True, timeout=(1, 0.5))
        with response:
            assert response.status_code == 200
            assert response.headers["Content-Length"] == "1000000"
            started = time.monotonic()
            received = b"".join(itertools.islice(response.iter_content(1), 5))
            elapsed = time.monotonic() - started

    assert received == b"xxxxx"
    assert 0.3 < elapsed < 2


def test_full_backlog_makes_a_plain_connect_time_out(
    full_backlog: netfaults.FullBacklogListener,
) -> None:
    assert full_backlog.established >= 1
    started = time.monotonic()

    with pytest.raises(socket.timeout):
        socket.create_connection(full_backlog.address, timeout=1.0).close()

    assert time.monotonic() - started >= 0.9  # hung, not refused


def test_full_backlog_makes_requests_raise_connect_timeout(
    full_backlog: netfaults.FullBacklogListener, http: requests.Session
) -> None:
    with pytest.raises(requests.ConnectTimeout):
        http.post(full_backlog.url, json=[1], timeout=(0.5, 5))


def test_closed_port_refuses(closed_port: int, http: requests.Session) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=1.0).close()
    with pytest.raises(requests.ConnectionError) as caught:
        http.post(f"http://127.0.0.1:{closed_port}/hook", json=[1], timeout=(1, 1))
    assert not isinstance(caught.value, requests.Timeout)


def test_closed_port_function_gives_an_unbound_port() -> None:
    port = netfaults.closed_port()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
