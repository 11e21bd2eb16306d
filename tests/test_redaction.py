"""Configured header values are kept out of the answers tailhook keeps (dead letters and
their log line), however a receiver echoes them."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import BatchConfig, RetryConfig, WebhookConfig
from agent.sinks.redaction import MARK, Redactor, secret_values
from agent.telemetry import JSONFormatter
from tests.agent_support import wait_until
from tests.delivery_support import hit, running_sinks
from tests.support.receiver import Receiver, RecordedRequest, Response

TOKEN = 'tok/"en\\9-Zé'  # a slash, a quote, a backslash and a Latin-1 letter
BEARER = f"Bearer {TOKEN}"
BASIC = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
ALL = frozenset({"hit", "vulnerability", "system", "scope"})


def redactor(*values: str) -> Redactor:
    return Redactor(secret_values([("X-Any", value) for value in values]))


@pytest.mark.parametrize(
    "written",
    [
        BEARER.encode("latin-1"),  # as sent
        BEARER.encode("utf-8"),  # re-encoded
        json.dumps(BEARER).encode()[1:-1],  # JSON, \u00e9
        json.dumps(BEARER).encode()[1:-1].replace(b"\\u00e9", b"\\u00E9"),
        json.dumps(BEARER).encode()[1:-1].replace(b"/", b"\\/"),  # PHP's json_encode
        json.dumps(BEARER, ensure_ascii=False).encode()[1:-1],
        json.dumps(TOKEN).encode()[1:-1],  # the credentials alone
    ],
    ids=["latin1", "utf8", "json", "json-upper-hex", "json-slash", "json-utf8", "token"],
)
def test_every_way_an_echo_writes_a_value_is_redacted(written: bytes) -> None:
    body = b'{"headers": {"authorization": "' + written + b'"}, "ok": false}'
    redacted = redactor(BEARER).redact(body, 1024)
    assert redacted.startswith(b'{"headers": {"authorization": "')
    assert redacted.endswith(b'"}, "ok": false}')
    assert b"tok" not in redacted and MARK in redacted


def test_basic_credentials_are_redacted_encoded_and_decoded() -> None:
    body = f"{BASIC} | {BASIC.split()[1]} | alice:s3cret-pw | s3cret-pw".encode()
    assert redactor(BASIC).redact(body, 1024) == b" | ".join([MARK] * 4)


def test_a_value_across_the_kept_kib_is_redacted_whole() -> None:
    secret = "Bearer " + "k" * 40
    body = b"x" * 1000 + secret.encode() + b"y" * 500
    redacted = redactor(secret).redact(body, 1024)
    assert redacted == b"x" * 1000 + MARK + b"y" * 14
    assert b"kkkk" not in redacted


def test_a_value_cut_at_the_end_of_what_was_read_is_redacted() -> None:
    secret = "Bearer " + "k" * 40
    assert redactor(secret).redact(b"x" * 10 + secret.encode()[:20], 1024) == b"x" * 10 + MARK
    # what is read ends with fewer than 4 bytes of a value: nothing to hide yet
    assert redactor(secret).redact(b"abc Bea", 1024) == b"abc Bea"


def test_short_values_are_redacted_and_an_answer_without_values_is_unchanged() -> None:
    assert redactor("7").redact(b"tenant 7 of 17", 1024) == b"tenant [REDACTED] of 1[REDACTED]"
    assert redactor().redact(b"x" * 2000, 1024) == b"x" * 1024


def echo_headers(request: RecordedRequest, _n: int) -> Response:
    """A receiver refusing the batch with a page that lists the headers it got, the
    interesting one across the first KiB."""
    echoed = {"Authorization": request.headers["Authorization"]}
    echoed.update((name, request.headers[name]) for name in request.headers)
    padding = "p" * (1015 - len('{"padding": "", "headers": {"Authorization": "'))
    body = json.dumps({"padding": padding, "headers": echoed}, ensure_ascii=False).encode()
    assert body.index(b"Bearer") < 1024 < body.index(b"Bearer") + len(BEARER)
    return Response(400, body=body)


def test_dead_letters_and_logs_keep_no_header_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = (("Authorization", BEARER), ("X-Api-Key", "k3y-0f-the-tenant"))
    with Receiver(echo_headers) as echoing:
        hook = WebhookConfig(
            name="soc",
            url=echoing.url,
            events=ALL,
            headers=headers,
            batch=BatchConfig(max_wait=0.05),
            retry=RetryConfig(initial_backoff=0.05, max_backoff=0.2),
        )
        with running_sinks(tmp_path, [hook], [hit(1)]) as run:
            assert wait_until(
                lambda: (
                    run.value(
                        "tailhook_webhook_events_dead_lettered_total",
                        webhook="soc",
                        reason="rejected",
                    )
                    == 1
                ),
                5,
            )
        sent = echoing.requests[0]
    assert sent.headers["Authorization"] == BEARER  # sent as configured
    (line,) = (tmp_path / "dead-letter" / "soc.jsonl").read_bytes().splitlines()
    letter = json.loads(line)
    response = letter["response"]
    # The first KiB, which ends in the middle of the value (redacted whole, then cut).
    assert len(response) == 1024
    assert response.startswith('{"padding": "ppp')
    assert '"Authorization": "[REDAC' in response
    logged = "\n".join(JSONFormatter().format(record) for record in caplog.records)
    assert "A batch was dead-lettered" in logged
    for kept in (response, line.decode(), logged):
        for secret in ("tok/", "tok\\/", "k3y-0f", "en\\\\9"):
            assert secret not in kept, (secret, kept)


def test_the_log_line_of_a_dead_letter_carries_the_start_of_the_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with Receiver(Response(422, body=b'{"error": "bad field"}')) as refusing:
        hook = replace(
            WebhookConfig(name="soc", url=refusing.url, events=ALL),
            batch=BatchConfig(max_wait=0.05),
        )
        with running_sinks(tmp_path, [hook], [hit(1)]):
            assert wait_until(lambda: "A batch was dead-lettered" in caplog.text, 5)
    (record,) = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    entry = json.loads(JSONFormatter().format(record))
    assert entry["response"] == '{"error": "bad field"}'
    assert entry["status"] == 422
