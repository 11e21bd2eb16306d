"""Standard Webhooks v1 signatures, checked with the `standardwebhooks` package from PyPI.

The unit test pins `agent.sinks.signing.sign` to the Standard Webhooks spec example,
recomputed here with hmac/hashlib/base64. The delivery tests run a real `WebhookSink`
against a loopback `Receiver` and verify every request it recorded, retries included,
with `standardwebhooks.Webhook(secret).verify(body, headers)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from agent.config import BatchConfig, RetryConfig, SigningConfig, WebhookConfig
from agent.sinks.signing import sign
from tests.agent_support import wait_until
from tests.delivery_support import hit, running_sinks, scope
from tests.support.receiver import Receiver, RecordedRequest, Response, sequence

ALL = frozenset({"hit", "vulnerability", "system", "scope"})
FAST = BatchConfig(max_wait=0.05)
# Retry-After (below) spaces the retries; the backoff itself stays short.
QUICK_RETRY = RetryConfig(initial_backoff=0.01, max_backoff=2.0, max_elapsed=60)

# The example in the Standard Webhooks spec.
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode("ascii")


def webhook(url: str, *secrets: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(
        name="soc",
        url=url,
        events=ALL,
        batch=FAST,
        retry=QUICK_RETRY,
        signing=SigningConfig(secrets=tuple(secrets)),
    )
    return replace(base, **settings)  # type: ignore[arg-type]


def verify(secret: str, request: RecordedRequest) -> object:
    """What `standardwebhooks` returns for the request (the parsed body), or raises."""
    return Webhook(secret).verify(request.body, dict(request.headers))


def expected_v1(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- the signing function ---------------------------------------------------------------


def test_the_spec_example_vector_is_reproduced_independently() -> None:
    assert expected_v1(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_sign_matches_the_spec_example() -> None:
    assert sign((SPEC_SECRET,), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_sign_with_two_secrets_gives_one_signature_for_each_in_order() -> None:
    other = new_secret()
    header = sign((other, SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert header.split(" ") == [
        expected_v1(other, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
        SPEC_SIGNATURE,
    ]


def test_sign_is_accepted_by_the_standardwebhooks_verifier() -> None:
    secret = new_secret()
    msg_id, now, body = "msg_0123456789abcdef", int(time.time()), b'[{"n":1}]'
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign((secret,), msg_id, now, body),
    }
    assert Webhook(secret).verify(body, headers) == [{"n": 1}]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the body is covered
        Webhook(secret).verify(b'[{"n":2}]', headers)
    with pytest.raises(WebhookVerificationError):  # the id is covered
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})


# --- through a real sink ----------------------------------------------------------------


def test_every_request_verifies_including_retries(tmp_path: Path) -> None:
    secret = new_secret()
    # Retry-After: 1 puts each retry in a later second, so its webhook-timestamp differs.
    busy = Response(503, headers={"Retry-After": "1"})
    with Receiver(sequence(busy, busy, then=200)) as flaky:
        with running_sinks(tmp_path, [webhook(flaky.url, secret)], [hit(1), scope(2)]) as run:
            assert flaky.wait_for(3, timeout=5)
            assert wait_until(lambda: run.spool.backlog("soc") == 0, 5)  # delivery recorded
            assert run.value("tailhook_webhook_requests_total", webhook="soc", code="503") == 2
            assert run.value("tailhook_webhook_requests_total", webhook="soc", code="200") == 1
        requests = flaky.requests
    assert len(requests) == 3
    sent = [{"object_type": "hit", "n": 1}, {"object_type": "scope", "n": 2}]
    for request in requests:
        assert verify(secret, request) == sent
        signature = request.headers["webhook-signature"]
        assert len(signature.split(" ")) == 1
        assert signature == expected_v1(
            secret,
            request.headers["webhook-id"],
            request.headers["webhook-timestamp"],
            request.body,
        )
        # the timestamp is the attempt's own
        assert abs(int(request.headers["webhook-timestamp"]) - request.received_at) <= 2
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    timestamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert timestamps == sorted(set(timestamps)), f"timestamps not renewed: {timestamps}"
    assert len({r.headers["webhook-signature"] for r in requests}) == 3


def test_rotation_sends_two_signatures_each_accepted_alone(
    tmp_path: Path, receiver: Receiver
) -> None:
    new, old = new_secret(), new_secret()
    with running_sinks(tmp_path, [webhook(receiver.url, new, old)], [hit(1)]):
        assert receiver.wait_for(1, timeout=5)
    request = receiver.requests[0]
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    msg_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    assert signatures == [
        expected_v1(new, msg_id, timestamp, request.body),
        expected_v1(old, msg_id, timestamp, request.body),
    ]
    assert verify(new, request) == [{"object_type": "hit", "n": 1}]
    assert verify(old, request) == [{"object_type": "hit", "n": 1}]
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), request)


def test_a_verifier_with_the_wrong_secret_rejects(tmp_path: Path, receiver: Receiver) -> None:
    secret = new_secret()
    with running_sinks(tmp_path, [webhook(receiver.url, secret)], [hit(1)]):
        assert receiver.wait_for(1, timeout=5)
    request = receiver.requests[0]
    assert verify(secret, request) == [{"object_type": "hit", "n": 1}]
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), request)
    with pytest.raises(WebhookVerificationError):  # tampered body
        Webhook(secret).verify(request.body.replace(b"1", b"2"), dict(request.headers))


def test_without_signing_there_is_no_signature_header(tmp_path: Path, receiver: Receiver) -> None:
    with running_sinks(tmp_path, [webhook(receiver.url, signing=None)], [hit(1)]):
        assert receiver.wait_for(1, timeout=5)
    headers = receiver.requests[0].headers
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] and headers["webhook-timestamp"]


def test_a_raw_secret_without_the_prefix_is_used_as_its_utf8_bytes(
    tmp_path: Path, receiver: Receiver
) -> None:
    with running_sinks(tmp_path, [webhook(receiver.url, "plain-shared-secret")], [hit(1)]):
        assert receiver.wait_for(1, timeout=5)
    request = receiver.requests[0]
    # standardwebhooks takes a raw key as bytes
    assert Webhook(b"plain-shared-secret").verify(request.body, dict(request.headers)) == [
        {"object_type": "hit", "n": 1}
    ]
