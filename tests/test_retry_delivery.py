"""Retries, Retry-After, redirects, permanent refusals and dead letters, through a real
`WebhookSink` posting to loopback `Receiver`s (CONTRACT §6)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import BatchConfig, RetryConfig, WebhookConfig
from agent.spool import NewSegment
from tests.delivery_support import Running, hit, running_sinks, scope
from tests.support.receiver import Receiver, RecordedRequest, Response, sequence

ALL = frozenset({"hit", "vulnerability", "system", "scope"})
FAST = BatchConfig(max_wait=0.05)
# initial_backoff is tiny: a wait of a second or more can only come from Retry-After.
TINY_BACKOFF = RetryConfig(initial_backoff=0.01, max_backoff=5.0, max_elapsed=60)
QUICK_RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=60)
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
#: Longer than QUICK_RETRY's max_backoff (0.2 s): a batch wrongly tried again after it
#: was finished would be sent within it. Waited only once the batch is seen finished.
RETRY_WINDOW = 0.3
DEAD_LETTER_FIELDS = {"time", "webhook", "webhook_id", "reason", "status", "response", "events"}


def webhook(url: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(name="soc", url=url, events=ALL, batch=FAST, retry=QUICK_RETRY)
    return replace(base, **settings)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def dead_letters(state_dir: Path, name: str = "soc") -> list[dict[str, Any]]:
    path = state_dir / "dead-letter" / f"{name}.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def dead_lettered(run: Running, reason: str) -> float:
    return run.value("tailhook_webhook_events_dead_lettered_total", webhook="soc", reason=reason)


def requests_with(run: Running, code: str) -> float:
    return run.value("tailhook_webhook_requests_total", webhook="soc", code=code)


def delivered(run: Running, event_type: str = "hit") -> float:
    return run.value(
        "tailhook_webhook_events_delivered_total", webhook="soc", event_type=event_type
    )


def finished(run: Running) -> bool:
    """The webhook has no batch in flight and nothing left to send."""
    return run.spool.backlog("soc") == 0 and run.spool.open_batch("soc") is None


def gap(requests: list[RecordedRequest]) -> float:
    return requests[1].received_monotonic - requests[0].received_monotonic


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_in_seconds_is_honoured(tmp_path: Path) -> None:
    first = Response(429, headers={"Retry-After": "1"})
    with Receiver(sequence(first, then=200)) as limited:
        hook = webhook(limited.url, retry=TINY_BACKOFF)
        with running_sinks(tmp_path, [hook], [hit(1)]) as run:
            assert limited.wait_for(2, timeout=5)
            wait_until(lambda: delivered(run) == 1, 2, "the delivery to be counted")
            assert requests_with(run, "429") == 1 and requests_with(run, "200") == 1
        requests = limited.requests
    assert len(requests) == 2
    assert 0.95 <= gap(requests) < 2.0, gap(requests)
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    assert requests[0].body == requests[1].body


@pytest.mark.parametrize("name", ["retry-after", "RETRY-AFTER"])
def test_retry_after_is_found_whatever_the_case_of_its_name(tmp_path: Path, name: str) -> None:
    with Receiver(sequence(Response(503, headers={name: "1"}), then=200)) as busy:
        with running_sinks(tmp_path, [webhook(busy.url, retry=TINY_BACKOFF)], [hit(1)]) as run:
            assert busy.wait_for(2, timeout=5)
            wait_until(lambda: delivered(run) == 1, 2, "the delivery to be counted")
        requests = busy.requests
    assert 0.95 <= gap(requests) < 2.0, gap(requests)


def test_retry_after_beyond_max_backoff_is_capped(tmp_path: Path) -> None:
    first = Response(429, headers={"Retry-After": "3600"})
    with Receiver(sequence(first, then=200)) as limited:
        retry = RetryConfig(initial_backoff=0.01, max_backoff=0.5, max_elapsed=60)
        with running_sinks(tmp_path, [webhook(limited.url, retry=retry)], [hit(1)]) as run:
            assert limited.wait_for(2, timeout=3), "Retry-After was not capped by max_backoff"
            wait_until(lambda: delivered(run) == 1, 2, "the delivery to be counted")
        requests = limited.requests
    # honoured up to max_backoff: it waits max_backoff, not the tiny jittered backoff
    assert 0.45 <= gap(requests) < 1.5, gap(requests)


def test_retry_after_as_an_http_date_is_honoured(tmp_path: Path) -> None:
    # HTTP-dates have whole seconds (formatdate rounds down): two seconds ahead is
    # always more than one second away when the sink reads it.
    def script(_request: RecordedRequest, n: int) -> Response:
        if n == 0:
            return Response(503, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)})
        return Response(200)

    with Receiver(script) as busy:
        hook = webhook(busy.url, retry=TINY_BACKOFF)
        with running_sinks(tmp_path, [hook], [hit(1)]) as run:
            assert busy.wait_for(2, timeout=5)
            wait_until(lambda: delivered(run) == 1, 2, "the delivery to be counted")
        requests = busy.requests
    assert len(requests) == 2
    assert 0.95 <= gap(requests) < 3.0, gap(requests)


def test_retry_after_as_an_http_date_waits_until_that_date(tmp_path: Path) -> None:
    dates: list[str] = []

    def script(_request: RecordedRequest, n: int) -> Response:
        if n == 0:
            dates.append(formatdate(time.time() + 2, usegmt=True))
            return Response(429, headers={"Retry-After": dates[0]})
        return Response(200)

    with Receiver(script) as limited:
        with running_sinks(tmp_path, [webhook(limited.url, retry=TINY_BACKOFF)], [hit(1)]):
            assert limited.wait_for(2, timeout=5)
        requests = limited.requests
    not_before = parsedate_to_datetime(dates[0]).timestamp()
    assert requests[1].received_at >= not_before - 0.05, (requests[1].received_at, not_before)


# --- redirects and permanent refusals -------------------------------------------------


@pytest.mark.parametrize("status", [302, 301, 307, 308])
def test_a_redirect_is_not_followed_and_is_dead_lettered(tmp_path: Path, status: int) -> None:
    with Receiver() as elsewhere:
        redirect = Response(status, headers={"Location": elsewhere.url})
        with Receiver(redirect) as moved:
            with running_sinks(tmp_path, [webhook(moved.url)], [hit(1), scope(2)]) as run:
                wait_until(
                    lambda: dead_lettered(run, "rejected") == 2, 5, "the batch to be dead-lettered"
                )
                # Finished: nothing is left that could be retried or sent elsewhere.
                wait_until(lambda: finished(run), 5, "the batch to be finished")
                assert requests_with(run, str(status)) == 1
                assert run.value("tailhook_webhook_retries_total", webhook="soc") == 0
            assert len(moved.requests) == 1
        assert elsewhere.requests == []
    (letter,) = dead_letters(tmp_path)
    assert letter["reason"] == "rejected"
    assert letter["status"] == status
    assert letter["webhook"] == "soc"
    assert letter["webhook_id"] == moved.requests[0].headers["webhook-id"]
    assert letter["events"] == [{"object_type": "hit", "n": 1}, {"object_type": "scope", "n": 2}]


@pytest.mark.parametrize("status", [501, 400, 404, 410, 413, 422])
def test_permanent_statuses_are_not_retried(tmp_path: Path, status: int) -> None:
    with Receiver(sequence(status, then=200)) as refusing:
        with running_sinks(tmp_path, [webhook(refusing.url)], [hit(1)]) as run:
            wait_until(lambda: dead_lettered(run, "rejected") == 1, 5, "a dead letter")
            wait_until(lambda: finished(run), 5, "the batch to be finished")
            assert requests_with(run, str(status)) == 1
            assert requests_with(run, "200") == 0
        assert len(refusing.requests) == 1
    (letter,) = dead_letters(tmp_path)
    assert (letter["reason"], letter["status"]) == ("rejected", status)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_and_counted(tmp_path: Path, status: int) -> None:
    with Receiver(sequence(status, status, then=200)) as flaky:
        with running_sinks(tmp_path, [webhook(flaky.url)], [hit(1), hit(2)]) as run:
            assert flaky.wait_for(3, timeout=5)
            wait_until(lambda: delivered(run) == 2, 2, "the delivery to be counted")
            assert requests_with(run, str(status)) == 2
            assert requests_with(run, "200") == 1
            assert run.value("tailhook_webhook_retries_total", webhook="soc") == 2
            assert dead_lettered(run, "rejected") == 0 and dead_lettered(run, "expired") == 0
        requests = flaky.requests
    assert len(requests) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    assert dead_letters(tmp_path) == []


# --- max_elapsed and the dead-letter file ---------------------------------------------


def test_a_batch_past_max_elapsed_is_dead_lettered_as_expired(tmp_path: Path) -> None:
    long_body = b"".join(b"%04d," % i for i in range(600))  # 3000 bytes, no two KiB alike
    assert len(long_body) == 3000
    events = [hit(1), scope(2), hit(3)]
    sent = [json.loads(body) for _, body in events]
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=1.0)
    with Receiver(Response(503, body=long_body)) as down:
        with running_sinks(tmp_path, [webhook(down.url, retry=retry)], events) as run:
            wait_until(lambda: dead_lettered(run, "expired") >= 3, 4, "the batch to expire")
            expired_at = time.time()
            wait_until(lambda: finished(run), 5, "the batch to be finished")
            assert dead_lettered(run, "expired") == 3  # counts events, not batches
            assert dead_lettered(run, "rejected") == 0
            # the last attempt may be cut at expiry, before its answer came
            answered = requests_with(run, "503") + requests_with(run, "timeout")
            assert answered == len(down.requests)
            count = len(down.requests)
            time.sleep(RETRY_WINDOW)
            assert len(down.requests) == count, "the expired batch was sent again"
        requests = down.requests

    assert len(requests) >= 2  # retried before it expired
    span = requests[-1].received_monotonic - requests[0].received_monotonic
    # Retried until it expired (backoff 0.05-0.2 s), and no attempt began past
    # max_elapsed: a pause ends at expiry at the latest, and the batch is dead then.
    assert 0.6 <= span < 1.05, span
    ids = {r.headers["webhook-id"] for r in requests}
    assert len(ids) == 1 and len({r.body for r in requests}) == 1

    path = tmp_path / "dead-letter" / "soc.jsonl"
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1  # one JSON object per line
    (letter,) = dead_letters(tmp_path)
    assert set(letter) >= DEAD_LETTER_FIELDS
    assert RFC3339.fullmatch(letter["time"]), letter["time"]
    written = datetime.fromisoformat(letter["time"])
    assert written.tzinfo is not None
    assert abs(written.timestamp() - expired_at) < 5
    assert abs(written - datetime.now(UTC)).total_seconds() < 10
    assert letter["webhook"] == "soc"
    assert letter["webhook_id"] == ids.pop()
    assert letter["reason"] == "expired"
    assert letter["status"] == 503
    assert letter["response"] == long_body[:1024].decode()
    assert isinstance(letter["events"], list)
    assert letter["events"] == sent == requests[0].json()


def test_a_connection_failure_past_max_elapsed_has_a_null_status(
    tmp_path: Path, closed_port: int
) -> None:
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=0.5)
    hook = webhook(f"http://127.0.0.1:{closed_port}/hook", retry=retry)
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        wait_until(lambda: dead_lettered(run, "expired") == 1, 4, "the batch to expire")
        assert requests_with(run, "connection") >= 2
    (letter,) = dead_letters(tmp_path)
    assert letter["reason"] == "expired"
    assert letter["status"] is None
    assert letter["response"] == ""
    assert letter["events"] == [{"object_type": "hit", "n": 1}]


def test_each_dead_letter_is_appended_and_none_is_lost(tmp_path: Path) -> None:
    """Three batches refused: three entries in the one file, in order, each its own
    line; a restart adds to the file, never starts it again."""
    batch = BatchConfig(max_events=1, max_wait=0.05)
    with Receiver(400) as refusing:
        hook = webhook(refusing.url, batch=batch)
        with running_sinks(tmp_path, [hook], [hit(1), hit(2)]) as run:
            wait_until(lambda: dead_lettered(run, "rejected") == 2, 5, "two dead letters")
        with running_sinks(tmp_path, [hook], [hit(3)]) as run:
            wait_until(lambda: dead_lettered(run, "rejected") == 1, 5, "a third")
    letters = dead_letters(tmp_path)
    assert [letter["events"] for letter in letters] == [
        [{"object_type": "hit", "n": n}] for n in (1, 2, 3)
    ]
    assert [letter["webhook_id"] for letter in letters] == [
        r.headers["webhook-id"] for r in refusing.requests
    ]


# --- after a dead letter, delivery goes on ---------------------------------------------


def test_events_after_an_expired_batch_are_delivered_when_the_receiver_recovers(
    tmp_path: Path,
) -> None:
    first_id: list[str] = []

    def down_for_the_first_batch(request: RecordedRequest, _n: int) -> Response:
        if not first_id:
            first_id.append(request.headers["webhook-id"])
        return Response(503) if request.headers["webhook-id"] == first_id[0] else Response(200)

    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=0.8)
    batch = BatchConfig(max_events=2, max_wait=0.05)
    events = [hit(1), hit(2), hit(3)]
    with Receiver(down_for_the_first_batch) as recovering:
        hook = webhook(recovering.url, retry=retry, batch=batch)
        with running_sinks(tmp_path, [hook], events) as run:
            wait_until(lambda: delivered(run) == 1, 4, "the next batch to be delivered")
            assert dead_lettered(run, "expired") == 2
            # and events that arrive later go out too
            run.spool.append("test", NewSegment.of([hit(4), scope(5)]))
            wait_until(lambda: delivered(run) == 2, 3, "later events to be delivered")
            wait_until(lambda: delivered(run, "scope") == 1, 1, "later events to be delivered")
        ok = [r.json() for r in recovering.requests if r.headers["webhook-id"] != first_id[0]]
    assert ok == [
        [{"object_type": "hit", "n": 3}],
        [{"object_type": "hit", "n": 4}, {"object_type": "scope", "n": 5}],
    ]
    (letter,) = dead_letters(tmp_path)
    assert letter["webhook_id"] == first_id[0]
    assert letter["events"] == [{"object_type": "hit", "n": 1}, {"object_type": "hit", "n": 2}]


def test_events_after_a_rejected_batch_are_delivered(tmp_path: Path) -> None:
    batch = BatchConfig(max_events=1, max_wait=0.05)
    with Receiver(sequence(400, then=200)) as picky:
        hook = webhook(picky.url, batch=batch)
        with running_sinks(tmp_path, [hook], [hit(1), hit(2), hit(3)]) as run:
            wait_until(lambda: delivered(run) == 2, 4, "the later batches to be delivered")
            assert dead_lettered(run, "rejected") == 1
        bodies = picky.bodies_json()
    assert bodies == [[{"object_type": "hit", "n": n}] for n in (1, 2, 3)]
    (letter,) = dead_letters(tmp_path)
    assert letter["events"] == [{"object_type": "hit", "n": 1}]
