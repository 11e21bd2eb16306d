"""The webhook sink: one thread per enabled webhook, delivering its events in order.

The loop: take the batch in flight from the spool (a restart leaves one there), or form
a new one within ``max_events``/``max_bytes``/``max_wait`` and record it before its
first attempt (the spool makes its body in the webhook's form: ``payload``, ``body``;
the ``Content-Type`` follows the form recorded with the batch); send it, with the same
body and ``webhook-id`` on every attempt, until it
is delivered, refused for good, or older than ``retry.max_elapsed``; then let the spool
move this webhook's cursor past it. Each webhook has its own thread, connection and
cursor, so one slow or dead receiver never holds up another.

Once the receiver has decided (delivered, or refused for good: a dead letter), the
outcome is kept in memory until it is recorded: the dead letter written, then the
spool's cursor moved. If either write fails (a full disk, a locked spool), only the
write is retried, after a pause; the batch is never sent again for it. Only a stop
before the spool could record it leaves the batch to be sent once more at the next
start, under the same ``webhook-id``.

Time limits: each attempt ends by ``request_timeout``, or sooner when the batch reaches
``retry.max_elapsed`` (then it is dead-lettered as ``expired``), except for a batch that
was already that old when its delivery began (one recorded long ago, found at start):
it gets one whole attempt first.

Stopping with a deadline (``shutdown_timeout``): a batch in backoff stays in backoff,
and at most one attempt begins after the stop; if that fails too, the batch is kept for
the next start and the sink ends.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agent import __version__
from agent.config import WebhookConfig
from agent.errors import DeliveryError, StateError
from agent.sinks.deadletter import dead_letter_path, write_dead_letter
from agent.sinks.redaction import Redactor, secret_values
from agent.sinks.retry import Verdict, backoff_delay, classify_response, parse_retry_after
from agent.sinks.signing import sign
from agent.sinks.transport import Answer, Transport
from agent.spool import Batch, Spool
from agent.telemetry import Metrics, fields
from agent.worker import RECOVERY_WAIT, Worker

log = logging.getLogger(__name__)

USER_AGENT = f"tailhook/{__version__}"
IDLE_WAIT = 1.0
#: The first bytes of an answer kept in a dead letter.
RESPONSE_KEPT_BYTES = 1024
#: ... and in the log line that reports it.
RESPONSE_LOGGED_CHARS = 200


def request_headers(
    config: WebhookConfig,
    webhook_id: str,
    body: bytes,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers of one attempt: fixed ones, the configured ones, the Standard Webhooks
    ``webhook-*`` ones (signed over the body as sent, when the webhook has a secret)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": content_type,
        "User-Agent": USER_AGENT,
        **dict(config.headers),
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
    }
    if config.signing is not None:
        headers["webhook-signature"] = sign(config.signing.secrets, webhook_id, timestamp, body)
    return headers


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # rejected | expired
    status: int | None
    response: bytes  # the start of the answer's body, header values redacted


@dataclass(frozen=True)
class Outcome:
    """What the receiver decided for a batch, kept until the spool has recorded it."""

    batch: Batch
    letter: DeadLetter | None = None  # None: delivered
    letter_written: bool = False
    announced: bool = False  # integration_broken, for a first expiry, is in the spool
    finishing: bool = False  # the spool was asked to finish it (and may have done so)


class WebhookSink(Worker):
    """Delivers one webhook's events from the spool."""

    activity = "delivery"

    def __init__(
        self,
        config: WebhookConfig,
        spool: Spool,
        metrics: Metrics,
        state_dir: Path,
        rng: random.Random | None = None,
        on_broken: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(f"webhook-{config.name}", {"webhook": config.name})
        # A step may wait for a batch to fill, then make one attempt (backoff is a pause).
        self.step_budget += config.batch.max_wait + config.connect_timeout + config.request_timeout
        self.name = config.name
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self.state_dir = state_dir
        self.transport = Transport(config)
        self._redactor = Redactor(secret_values(config.headers))
        self._rng = rng or random.Random()
        self._duration = metrics.request_duration.labels(webhook=self.name)
        self._outcome: Outcome | None = None
        self._letter_failing = False
        #: Called (in this thread) with the webhook's name when a batch expires after a
        #: delivery, or at the first expiry: the agent announces ``integration_broken``.
        #: Once per outage: a delivery ends it.
        self._on_broken = on_broken
        self._broken = False
        self.in_flight = threading.Event()

    # -- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        self.spool.wake()

    def teardown(self) -> None:
        self.transport.close()

    def stop_now(self) -> None:
        """Stop at once, cutting the request in flight (a reload replaces this sink);
        the batch stays recorded and the next sink sends it under the same id."""
        self.stop()
        self.transport.abort()

    def step(self) -> bool:
        """Record the last outcome, or deliver the next batch; False to end (stopping
        with nothing left to send, or giving up on a failing webhook)."""
        if self.halted:
            return False
        if self._outcome is not None:
            self._record(self._outcome)
            return True
        batch = self.spool.open_batch(self.name) or self._next_batch()
        if batch is None:
            return not self.stopping
        outcome = self._deliver(batch)
        if outcome is None:
            return False  # stopping: the batch stays recorded for the next start
        self._outcome = outcome
        self._record(outcome)
        return True

    def _next_batch(self) -> Batch | None:
        """Wait for events and form a batch, honouring ``max_wait``; None if none came."""
        limits = self.config.batch
        if not self.spool.wait_pending(self.name, IDLE_WAIT, self._stop):
            # Idle: this also steps the cursor over events of types it does not take.
            return self.spool.next_batch(self.name, limits.max_events, limits.max_bytes)
        deadline = time.monotonic() + limits.max_wait
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.spool.backlog(self.name) >= limits.max_events:
                break
            self.spool.wait_change(min(remaining, 0.05))
        return self.spool.next_batch(self.name, limits.max_events, limits.max_bytes)

    # -- attempts ---------------------------------------------------------------------

    def _deliver(self, batch: Batch) -> Outcome | None:
        """Attempt ``batch`` until the receiver decides or it expires; None if the sink
        stops first."""
        expires = batch.created + self.config.retry.max_elapsed  # wall clock
        # Expired before its delivery began (recorded long ago): one whole attempt first.
        last_chance = time.time() >= expires
        attempt = batch.attempts
        reported: tuple[int | None, bytes] = (None, b"")  # the answer an expiry reports
        tried_since_stop = False
        while not self.halted:
            if not last_chance and time.time() >= expires:
                return self._dead(batch, "expired", *reported)
            if self.stopping:
                if tried_since_stop:
                    return None
                tried_since_stop = True
            if attempt > 0:
                self.metrics.retries.labels(webhook=self.name).inc()
            attempt += 1
            cut = None if last_chance else time.monotonic() + (expires - time.time())
            status, answer, error = self._attempt(batch, cut)
            verdict = classify_response(status)
            if verdict is Verdict.DELIVERED:
                for kind, n in batch.type_counts.items():
                    self.metrics.delivered.labels(webhook=self.name, event_type=kind).inc(n)
                return Outcome(batch)
            head = answer.body_head if answer else b""
            if verdict is Verdict.PERMANENT:
                return self._dead(batch, "rejected", status, head)
            expired = last_chance or time.time() >= expires
            if answer is not None or not expired:
                reported = (status, head)  # an attempt cut at expiry keeps the last answer
            if expired:
                return self._dead(batch, "expired", *reported)
            delay = self._backoff(attempt, answer)
            self._log_failure(batch, status, error, attempt, delay)
            if self.stopping and tried_since_stop:
                return None
            # The pause ends at expiry at the latest: the batch is dead-lettered then.
            self.pause(min(delay, max(0.0, expires - time.time())))
        return None

    def _attempt(
        self, batch: Batch, cut: float | None
    ) -> tuple[int | None, Answer | None, str | None]:
        headers = request_headers(
            self.config, batch.webhook_id, batch.body, batch.form.content_type
        )
        started = time.monotonic()
        self.in_flight.set()
        try:
            answer = self.transport.send(batch.body, headers, cut)
        except DeliveryError as exc:
            self.metrics.requests.labels(webhook=self.name, code=exc.kind).inc()
            return None, None, f"{exc.kind}: {exc}"
        finally:
            self.in_flight.clear()
            self._duration.observe(time.monotonic() - started)
        self.metrics.requests.labels(webhook=self.name, code=str(answer.status)).inc()
        return answer.status, answer, None

    def _backoff(self, attempt: int, answer: Answer | None) -> float:
        """Seconds before the next attempt; the failed one is recorded (for the backoff
        after a restart: a batch delivered at its first attempt costs no write for it)."""
        # If the spool cannot record it, only the backoff after a restart is shorter;
        # the outage itself is reported where it stops something (sources, outcomes).
        with contextlib.suppress(StateError):
            self.spool.count_attempt(self.name)
        retry_after = None
        if answer is not None:
            retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time())
        retry = self.config.retry
        return backoff_delay(
            attempt, retry.initial_backoff, retry.max_backoff, retry_after, self._rng
        )

    def _log_failure(
        self, batch: Batch, status: int | None, error: str | None, attempt: int, delay: float
    ) -> None:
        log.warning(
            "A webhook request failed; retrying",
            extra=fields(
                webhook=self.name,
                webhook_id=batch.webhook_id,
                status=status,
                error=error,
                attempt=attempt,
                retry_in=round(delay, 3),
            ),
        )

    def _dead(self, batch: Batch, reason: str, status: int | None, head: bytes) -> Outcome:
        response = self._redactor.redact(head, RESPONSE_KEPT_BYTES)
        return Outcome(batch, DeadLetter(reason, status, response))

    # -- recording outcomes -----------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        """Write the dead letter (if any), then move the cursor past the batch. A write
        that fails leaves ``_outcome`` set, so the next step retries that write alone."""
        if outcome.letter is not None and not outcome.letter_written:
            if not self._write_letter(outcome.batch, outcome.letter):
                self.pause(RECOVERY_WAIT)
                return
            outcome = self._outcome = replace(outcome, letter_written=True)
        if self._announces(outcome):
            assert self._on_broken is not None
            self._on_broken(self.name)  # a StateError: the Worker pauses, this is retried
            outcome = self._outcome = replace(outcome, announced=True)
        if outcome.finishing and not self._still_open(outcome.batch):
            self._outcome = None  # the last try did finish it, then failed after
            return
        self._outcome = replace(outcome, finishing=True)
        self.spool.finish_batch(self.name, outcome.batch)  # a StateError: the Worker pauses
        self._outcome = None
        if outcome.letter is None:
            self._broken = False
        elif outcome.letter.reason == "expired":
            self._broken = True

    def _announces(self, outcome: Outcome) -> bool:
        """The first expiry of an outage is announced, once."""
        expired = outcome.letter is not None and outcome.letter.reason == "expired"
        return expired and not self._broken and not outcome.announced and bool(self._on_broken)

    def _still_open(self, batch: Batch) -> bool:
        recorded = self.spool.open_batch(self.name)
        return recorded is not None and recorded.webhook_id == batch.webhook_id

    def _write_letter(self, batch: Batch, letter: DeadLetter) -> bool:
        try:
            write_dead_letter(
                self.state_dir,
                self.name,
                batch.webhook_id,
                letter.reason,
                letter.status,
                letter.response,
                batch.events,  # the §5 objects, whatever the form sent
            )
        except (OSError, StateError) as exc:  # StateError: a link or a non-file refused
            if not self._letter_failing:
                log.error(
                    "A dead letter cannot be written; the batch is kept, not sent again,"
                    " and the write retried",
                    extra=fields(
                        webhook=self.name,
                        webhook_id=batch.webhook_id,
                        path=str(dead_letter_path(self.state_dir, self.name)),
                        error=getattr(exc, "strerror", None) or str(exc),
                    ),
                )
            self._letter_failing = True
            return False
        if self._letter_failing:
            log.warning("Dead letters can be written again", extra=fields(webhook=self.name))
            self._letter_failing = False
        self._report_dead_letter(batch, letter)
        return True

    def _report_dead_letter(self, batch: Batch, letter: DeadLetter) -> None:
        for _kind, n in batch.type_counts.items():
            self.metrics.dead_lettered.labels(webhook=self.name, reason=letter.reason).inc(n)
        response = letter.response.decode("utf-8", errors="replace")
        log.error(
            "A batch was dead-lettered; its events were not delivered",
            extra=fields(
                webhook=self.name,
                webhook_id=batch.webhook_id,
                reason=letter.reason,
                status=letter.status,
                events=batch.count,
                response=response[:RESPONSE_LOGGED_CHARS],
            ),
        )
