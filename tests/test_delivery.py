"""Webhook delivery against real loopback servers: HTTP, HTTPS, mTLS, faults."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from agent import __version__
from agent.config import BatchConfig, RetryConfig, TLSConfig, WebhookConfig
from agent.spool import NewSegment
from tests.agent_support import caught_up, file_config, hit_line, running_agent, wait_until
from tests.delivery_support import hit, running_sinks, scope
from tests.support.netfaults import FullBacklogListener, SilentServer, TricklingServer
from tests.support.receiver import Receiver, TLSMaterial, sequence

ALL = frozenset({"hit", "vulnerability", "system", "scope"})
FAST = BatchConfig(max_wait=0.05)
QUICK_RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=60)


def webhook(url: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(name="soc", url=url, events=ALL, batch=FAST, retry=QUICK_RETRY)
    return replace(base, **settings)  # type: ignore[arg-type]


def test_a_batch_is_posted_as_a_json_array_with_every_header(
    tmp_path: Path, receiver: Receiver
) -> None:
    hook = webhook(receiver.url, headers=(("Authorization", "Bearer s3cret"), ("X-Tenant", "7")))
    with running_sinks(tmp_path, [hook], [hit(1), hit(2), scope(3)]) as run:
        assert receiver.wait_for(1, timeout=10)
        assert wait_until(lambda: run.spool.backlog("soc") == 0, 5)  # delivered, recorded
    assert len(receiver.requests) == 1  # the three events in one batch, sent once
    request = receiver.requests[0]
    assert request.method == "POST"
    assert request.json() == [
        {"object_type": "hit", "n": 1},
        {"object_type": "hit", "n": 2},
        {"object_type": "scope", "n": 3},
    ]
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"tailhook/{__version__}"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Tenant"] == "7"
    assert re.fullmatch(r"msg_[0-9a-f]{32}", headers["webhook-id"])
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30


def test_put_is_used_when_configured(tmp_path: Path, receiver: Receiver) -> None:
    with running_sinks(tmp_path, [webhook(receiver.url, method="PUT")], [hit(1)]):
        assert receiver.wait_for(1, timeout=10)
    assert receiver.requests[0].method == "PUT"


def test_only_subscribed_event_types_are_sent(tmp_path: Path, receiver: Receiver) -> None:
    hook = webhook(receiver.url, events=frozenset({"scope"}))
    with running_sinks(tmp_path, [hook], [hit(1), scope(2), hit(3), scope(4)]) as run:
        assert receiver.wait_for(lambda reqs: sum(len(r.json()) for r in reqs) >= 2, timeout=10)
        assert wait_until(
            lambda: (
                run.value(
                    "tailhook_webhook_events_delivered_total", webhook="soc", event_type="scope"
                )
                == 2
            ),
            5,
        )
        # Nothing is left to send: whatever arrived is all that ever will.
        assert wait_until(lambda: run.spool.backlog("soc") == 0, 5)
        assert (
            run.value("tailhook_webhook_events_delivered_total", webhook="soc", event_type="hit")
            == 0
        )
    received = [obj for body in receiver.bodies_json() for obj in body]
    assert received == [{"object_type": "scope", "n": 2}, {"object_type": "scope", "n": 4}]


def test_a_webhook_with_no_event_types_sends_nothing(tmp_path: Path, receiver: Receiver) -> None:
    hook = webhook(receiver.url, events=frozenset())
    with running_sinks(tmp_path, [hook], [hit(1), scope(2)]) as run:
        assert not receiver.wait_for(1, timeout=1.0)
        assert run.spool.held_bytes == 0  # nothing is kept for it either


def test_a_disabled_webhook_sends_nothing_and_keeps_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The real agent, one webhook enabled and one not: the disabled one gets no sink and
    no claim on events, so once the enabled one has its events the spool holds nothing.
    (running_sinks leaves disabled webhooks out itself: it cannot tell.)"""
    log = tmp_path / "detections.log"
    log.write_bytes(hit_line(1) + b"\n")
    base = file_config(tmp_path, receiver.url, (str(log),))
    with Receiver() as off_receiver:
        off = replace(base.webhooks[0], name="off", url=off_receiver.url, enabled=False)
        with running_agent(replace(base, webhooks=(base.webhooks[0], off))) as agent:
            assert receiver.wait_for(1, timeout=10)
            assert wait_until(lambda: caught_up(agent, log), 5)
            assert agent.spool is not None and agent.spool.held_bytes == 0
            assert [sink.name for sink in agent.sinks] == ["soc"]
        assert off_receiver.requests == []


def test_batches_respect_max_events(tmp_path: Path, receiver: Receiver) -> None:
    hook = webhook(receiver.url, batch=BatchConfig(max_events=3, max_wait=0.05))
    with running_sinks(tmp_path, [hook], [hit(n) for n in range(10)]):
        assert receiver.wait_for(4, timeout=10)
    sizes = [len(body) for body in receiver.bodies_json()]
    assert sizes == [3, 3, 3, 1]


def test_a_failed_batch_is_retried_with_the_same_id_and_body(tmp_path: Path) -> None:
    with Receiver(sequence(503, 500, 429, then=200)) as flaky:
        with running_sinks(tmp_path, [webhook(flaky.url)], [hit(1), hit(2)]) as run:
            assert flaky.wait_for(4, timeout=10)
            assert wait_until(lambda: run.spool.backlog("soc") == 0, 5)  # delivery recorded
            assert run.value("tailhook_webhook_retries_total", webhook="soc") == 3
            assert run.value("tailhook_webhook_requests_total", webhook="soc", code="503") == 1
            assert run.value("tailhook_webhook_requests_total", webhook="soc", code="200") == 1
        ids = {r.headers["webhook-id"] for r in flaky.requests}
        bodies = {r.body for r in flaky.requests}
    assert len(ids) == 1 and len(bodies) == 1


def test_a_permanent_refusal_is_dead_lettered(tmp_path: Path) -> None:
    with Receiver(sequence(400, then=200)) as refusing:
        with running_sinks(tmp_path, [webhook(refusing.url)], [hit(1)]) as run:
            assert refusing.wait_for(1, timeout=10)
            # The batch finished (dead-lettered): nothing is left that could be retried.
            assert wait_until(lambda: run.spool.backlog("soc") == 0, 5)
            assert run.spool.open_batch("soc") is None
            assert (
                run.value(
                    "tailhook_webhook_events_dead_lettered_total", webhook="soc", reason="rejected"
                )
                == 1
            )
        assert len(refusing.requests) == 1  # not retried
    letter = (tmp_path / "dead-letter" / "soc.jsonl").read_text()
    assert '"reason":"rejected"' in letter and '"status":400' in letter


def test_https_with_a_private_ca_is_verified(
    tmp_path: Path, https_receiver: Receiver, tls_material: TLSMaterial
) -> None:
    hook = webhook(https_receiver.url, tls=TLSConfig(ca_file=str(tls_material.ca_cert)))
    with running_sinks(tmp_path, [hook], [hit(1)]):
        assert https_receiver.wait_for(1, timeout=10)


def test_https_without_verification_delivers_when_verify_is_false(
    tmp_path: Path, https_receiver: Receiver
) -> None:
    hook = webhook(https_receiver.url, tls=TLSConfig(verify=False))
    with running_sinks(tmp_path, [hook], [hit(1)]):
        assert https_receiver.wait_for(1, timeout=10)


def test_https_to_an_unknown_ca_is_refused_as_tls(tmp_path: Path, https_receiver: Receiver) -> None:
    with running_sinks(tmp_path, [webhook(https_receiver.url)], [hit(1)]) as run:
        deadline = time.monotonic() + 10
        while run.value("tailhook_webhook_requests_total", webhook="soc", code="tls") < 1:
            assert time.monotonic() < deadline, "no tls failure was counted"
            time.sleep(0.05)
    assert https_receiver.requests == []


def test_mtls_delivers_with_the_client_certificate(
    tmp_path: Path, mtls_receiver: Receiver, tls_material: TLSMaterial
) -> None:
    tls = TLSConfig(
        ca_file=str(tls_material.ca_cert),
        cert_file=str(tls_material.client_cert),
        key_file=str(tls_material.client_key),
    )
    with running_sinks(tmp_path, [webhook(mtls_receiver.url, tls=tls)], [hit(1)]):
        assert mtls_receiver.wait_for(1, timeout=10)
    assert mtls_receiver.requests[0].peer_cert is not None


def test_mtls_without_a_certificate_or_with_another_ca_delivers_nothing(
    tmp_path: Path, mtls_receiver: Receiver, tls_material: TLSMaterial
) -> None:
    no_cert = webhook(
        mtls_receiver.url, name="no-cert", tls=TLSConfig(ca_file=str(tls_material.ca_cert))
    )
    other_ca = webhook(
        mtls_receiver.url,
        name="other-ca",
        tls=TLSConfig(
            ca_file=str(tls_material.ca_cert), cert_file=str(tls_material.other_client_pem)
        ),
    )
    with running_sinks(tmp_path, [no_cert, other_ca], [hit(1)]) as run:
        assert mtls_receiver.wait_for_handshake_failures(4, timeout=10)
        assert run.spool.backlog("no-cert") == 1 and run.spool.backlog("other-ca") == 1
    assert mtls_receiver.requests == []


def test_a_server_that_never_answers_times_out(tmp_path: Path, silent_server: SilentServer) -> None:
    hook = webhook(silent_server.url, request_timeout=0.5)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        assert silent_server.wait_for_connections(1, timeout=5)
        started = time.monotonic()
        while run.value("tailhook_webhook_requests_total", webhook="soc", code="timeout") < 1:
            assert time.monotonic() - started < 5, "the request did not time out"
            time.sleep(0.05)


def test_a_trickled_answer_times_out_as_a_whole(
    tmp_path: Path, trickling_server: TricklingServer
) -> None:
    hook = webhook(trickling_server.url, request_timeout=1.5)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        assert trickling_server.wait_for_connections(1, timeout=5)
        started = time.monotonic()
        while run.value("tailhook_webhook_requests_total", webhook="soc", code="timeout") < 1:
            assert time.monotonic() - started < 4, "the trickled answer did not time out"
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 3.0


def test_a_full_accept_queue_is_a_connect_timeout(
    tmp_path: Path, full_backlog: FullBacklogListener
) -> None:
    hook = webhook(full_backlog.url, connect_timeout=0.5, request_timeout=30)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        started = time.monotonic()
        while run.value("tailhook_webhook_requests_total", webhook="soc", code="timeout") < 1:
            assert time.monotonic() - started < 5, "connecting did not time out"
            time.sleep(0.02)
        assert time.monotonic() - started < 2.0  # the connect timeout, not the request one


def test_a_refused_connection_is_counted_and_retried(tmp_path: Path, closed_port: int) -> None:
    hook = webhook(f"http://127.0.0.1:{closed_port}/hook")
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        started = time.monotonic()
        while run.value("tailhook_webhook_requests_total", webhook="soc", code="connection") < 2:
            assert time.monotonic() - started < 5
            time.sleep(0.02)
        assert run.spool.backlog("soc") == 1


def test_one_slow_webhook_does_not_delay_another(tmp_path: Path, receiver: Receiver) -> None:
    """The events come while the slow webhook's request hangs (not before: the fast one
    could then send them all while the slow one still waits out its batch.max_wait)."""
    with SilentServer() as stuck:
        slow = webhook(stuck.url, name="slow", request_timeout=30)
        fast = webhook(receiver.url, name="fast", batch=BatchConfig(max_events=1, max_wait=0.01))
        with running_sinks(tmp_path, [slow, fast], [hit(0)]) as run:
            assert stuck.wait_for_connections(1, timeout=5)
            assert wait_until(lambda: stuck.bytes_received > 0, 5)  # its request is sent
            assert receiver.wait_for(1, timeout=5)
            started = time.monotonic()
            run.spool.append("test", NewSegment.of([hit(n) for n in range(1, 20)]))
            assert receiver.wait_for(20, timeout=10)
            took = time.monotonic() - started
            assert stuck.accepted == 1  # the slow one is still in its first request
    assert took < 3.0, f"the fast webhook took {took:.1f} s for 19 events"
