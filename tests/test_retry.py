"""The retry policy: one pure function per decision."""

import random
from email.utils import formatdate

import pytest

from agent.sinks.retry import Verdict, backoff_delay, classify_response, parse_retry_after


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert classify_response(status) is Verdict.DELIVERED


@pytest.mark.parametrize("status", [None, 408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_failures_are_retried(status: int | None) -> None:
    assert classify_response(status) is Verdict.RETRY


@pytest.mark.parametrize("status", [301, 302, 307, 308, 400, 401, 403, 404, 413, 422, 501])
def test_redirects_other_4xx_and_501_are_permanent(status: int) -> None:
    assert classify_response(status) is Verdict.PERMANENT


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (30, 300.0)]:
        delays = [backoff_delay(attempt, 1.0, 300.0, None, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # jitter spans the whole range
        assert min(delays) < ceiling * 0.1


def test_retry_after_is_honoured_up_to_max_backoff() -> None:
    assert backoff_delay(1, 1.0, 300.0, retry_after=42.0) == 42.0
    assert backoff_delay(1, 1.0, 300.0, retry_after=4000.0) == 300.0


def test_retry_after_in_seconds_and_as_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("Tue Nov 14 22:13:50 2023", now) == pytest.approx(30.0)  # asctime
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
