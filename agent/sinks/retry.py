"""The retry policy, in pure functions: what an answer means, and how long to wait.

- 2xx: delivered.
- Connection errors, timeouts, TLS failures, 408, 425, 429 and 5xx except 501: retried
  with capped exponential backoff and full jitter; ``Retry-After`` (seconds or an
  HTTP-date) is honoured, capped by ``max_backoff``.
- Everything else (3xx, since redirects are not followed, other 4xx, 501): permanent.
- A batch whose first attempt was longer than ``max_elapsed`` ago is dead-lettered.
"""

from __future__ import annotations

import enum
import random
from datetime import UTC
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 425, 429})


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


def classify_response(status: int | None) -> Verdict:
    """``status`` is the HTTP status, or None when no answer came (timeout, connection, tls)."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in RETRYABLE_STATUSES or (500 <= status < 600 and status != 501):
        return Verdict.RETRY
    return Verdict.PERMANENT


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime form: RFC 9110 says it is UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before attempt ``attempt + 1`` (``attempt`` >= 1 attempts made so far).

    Full jitter: uniform in [0, min(maximum, initial * 2**(attempt-1))]. A server's
    ``Retry-After`` replaces it, capped by ``maximum``.
    """
    if retry_after is not None:
        return min(maximum, max(0.0, retry_after))
    ceiling = min(maximum, initial * (2 ** min(attempt - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)
