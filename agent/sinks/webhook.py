"""The webhook sink: one thread per enabled webhook, delivering its events in order.

The loop: take the batch in flight from the spool (a restart leaves one there), or form
a new one within ``max_events``/``max_bytes``/``max_wait`` and record it before its
first attempt; send it, with the same body and ``webhook-id`` on every attempt, until it
is delivered, refused for good, or older than ``retry.max_elapsed``; then let the spool
move this webhook's cursor past it. Each webhook has its own thread, connection pool and
cursor, so one slow or dead receiver never holds up another.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path

from agent import __version__
from agent.config import WebhookConfig
from agent.errors import DeliveryError
from agent.sinks.deadletter import write_dead_letter
from agent.sinks.retry import Verdict, backoff_delay, classify_response, parse_retry_after
from agent.sinks.signing import sign
from agent.sinks.transport import Answer, Transport
from agent.spool import Batch, Spool
from agent.telemetry import Metrics, fields
from agent.worker import Worker

log = logging.getLogger(__name__)

USER_AGENT = f"tailhook/{__version__}"
IDLE_WAIT = 1.0


def request_headers(config: WebhookConfig, webhook_id: str, body: bytes) -> dict[str, str]:
    """The headers of one attempt: fixed ones, the configured ones, the Standard Webhooks
    ``webhook-*`` ones (signed, when the webhook has a secret)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **dict(config.headers),
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
    }
    if config.signing is not None:
        headers["webhook-signature"] = sign(config.signing.secrets, webhook_id, timestamp, body)
    return headers


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
        self._rng = rng or random.Random()
        self._duration = metrics.request_duration.labels(webhook=self.name)
        self.in_flight = threading.Event()

    # -- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        self.spool.wake()

    def teardown(self) -> None:
        self.transport.close()

    def step(self) -> bool:
        """Deliver the next batch, if one comes; False once draining has nothing left."""
        if self.halted:
            return False
        batch = self.spool.open_batch(self.name) or self._next_batch()
        if batch is None:
            return not self.stopping
        self._deliver(batch)
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

    def _deliver(self, batch: Batch) -> None:
        """Attempt ``batch`` until it is finished or the sink stops."""
        attempt = batch.attempts
        while not self.halted:
            if attempt > 0:
                self.metrics.retries.labels(webhook=self.name).inc()
            attempt += 1
            status, answer, error = self._attempt(batch)
            verdict = classify_response(status)
            if verdict is Verdict.DELIVERED:
                self._finished(batch)
                for kind, n in batch.type_counts.items():
                    self.metrics.delivered.labels(webhook=self.name, event_type=kind).inc(n)
                return
            head = answer.body_head if answer else b""
            if verdict is Verdict.PERMANENT:
                self._dead_letter(batch, "rejected", status, head)
                return
            if time.time() - batch.created >= self.config.retry.max_elapsed:
                self._dead_letter(batch, "expired", status, head)
                return
            # Failed attempts are recorded (for the backoff after a restart); a batch
            # delivered at its first attempt costs no write for it.
            self.spool.count_attempt(self.name)
            retry_after = None
            if answer is not None:
                retry_after = parse_retry_after(answer.headers.get("Retry-After"), time.time())
            delay = backoff_delay(
                attempt,
                self.config.retry.initial_backoff,
                self.config.retry.max_backoff,
                retry_after,
                self._rng,
            )
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
            if not self.pause(delay):
                return  # stopping: the batch stays recorded for the next start

    def _attempt(self, batch: Batch) -> tuple[int | None, Answer | None, str | None]:
        headers = request_headers(self.config, batch.webhook_id, batch.body)
        started = time.monotonic()
        self.in_flight.set()
        try:
            answer = self.transport.send(batch.body, headers)
        except DeliveryError as exc:
            self.metrics.requests.labels(webhook=self.name, code=exc.kind).inc()
            return None, None, f"{exc.kind}: {exc}"
        finally:
            self.in_flight.clear()
            self._duration.observe(time.monotonic() - started)
        self.metrics.requests.labels(webhook=self.name, code=str(answer.status)).inc()
        return answer.status, answer, None

    def _finished(self, batch: Batch) -> None:
        self.spool.finish_batch(self.name, batch)

    def _dead_letter(self, batch: Batch, reason: str, status: int | None, head: bytes) -> None:
        write_dead_letter(
            self.state_dir, self.name, batch.webhook_id, reason, status, head, batch.body
        )
        for _kind, n in batch.type_counts.items():
            self.metrics.dead_lettered.labels(webhook=self.name, reason=reason).inc(n)
        log.error(
            "A batch was dead-lettered; its events were not delivered",
            extra=fields(
                webhook=self.name,
                webhook_id=batch.webhook_id,
                reason=reason,
                status=status,
                events=batch.count,
            ),
        )
        self._finished(batch)
