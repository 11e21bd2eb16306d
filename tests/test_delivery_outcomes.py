"""Once the receiver has decided, the batch is never sent again for a write that failed:
a spool that cannot record the delivery (another SQLite connection holds the write lock),
a dead letter that cannot be written (its file is a directory). And a batch recorded
long ago is tried once at the next start before it is dead-lettered (CONTRACT §6)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.config import BatchConfig, RetryConfig, WebhookConfig
from agent.sinks.webhook import WebhookSink
from agent.spool import NewSegment, Spool
from agent.telemetry import Metrics
from tests.delivery_support import hit
from tests.support.receiver import Receiver, RecordedRequest, Response

ALL = frozenset({"hit", "vulnerability", "system", "scope"})
QUICK_RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_elapsed=60)
#: The agent waits 10 s for SQLite's write lock; a test need not.
BUSY_TIMEOUT_MS = 200


def webhook(url: str, **settings: object) -> WebhookConfig:
    base = WebhookConfig(
        name="soc", url=url, events=ALL, batch=BatchConfig(max_wait=0.05), retry=QUICK_RETRY
    )
    return replace(base, **settings)  # type: ignore[arg-type]


@dataclass
class Sink:
    spool: Spool
    sink: WebhookSink
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"webhook": "soc", **labels}) or 0.0


def open_spool(state_dir: Path, hook: WebhookConfig, metrics: Metrics) -> Spool:
    spool = Spool(state_dir / "spool.db", metrics)
    spool._db.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    spool.configure_webhooks({hook.name: hook.events})
    return spool


@contextmanager
def running_sink(
    state_dir: Path, hook: WebhookConfig, events: Sequence[tuple[str, bytes]] = ()
) -> Iterator[Sink]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    spool = open_spool(state_dir, hook, metrics)
    if events:
        spool.append("test", NewSegment.of(events))
    sink = WebhookSink(hook, spool, metrics, state_dir)
    sink.start()
    try:
        yield Sink(spool, sink, registry)
    finally:
        sink.stop()
        sink.join(10)
        spool.close()


class SpoolLock:
    """Another connection to the spool holding SQLite's write lock (``BEGIN EXCLUSIVE``):
    the agent's writes fail with "database is locked"; its reads go on (WAL)."""

    def __init__(self, state_dir: Path) -> None:
        self._db = sqlite3.connect(
            state_dir / "spool.db", isolation_level=None, check_same_thread=False, timeout=5
        )

    def take(self) -> None:
        self._db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self._db.execute("ROLLBACK")
        self._db.close()


def ids_received(receiver: Receiver) -> Counter[str]:
    return Counter(request.headers["webhook-id"] for request in receiver.requests)


def dead_letters(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "dead-letter" / "soc.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lock_then(lock: SpoolLock, status: int) -> Callable[[RecordedRequest, int], Response]:
    """A receiver script: at the first request, lock the spool, then answer ``status``."""

    def script(_request: RecordedRequest, n: int) -> Response:
        if n == 0:
            lock.take()
        return Response(status)

    return script


# --- the spool cannot record a delivery ---------------------------------------------------


def test_a_delivery_the_spool_cannot_record_is_not_sent_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    hook = webhook(receiver.url)
    with running_sink(tmp_path, hook) as run:
        lock = SpoolLock(tmp_path)
        receiver.answer_with(lock_then(lock, 200))
        run.spool.append("test", NewSegment.of([hit(1), hit(2)]))
        assert receiver.wait_for(1, timeout=5)
        wait_until(lambda: not run.spool.writable, 5, "the spool write to fail")
        # The sink retries recording the delivery (each try waits 0.2 s for the lock,
        # then pauses 1 s): it never sends the batch again meanwhile.
        assert not receiver.wait_for(2, timeout=2.5), "the delivered batch was sent again"
        assert run.spool.backlog("soc") == 2
        lock.release()
        wait_until(lambda: run.spool.backlog("soc") == 0, 5, "the delivery to be recorded")
        assert run.spool.open_batch("soc") is None
        run.spool.probe()  # the agent's gauge loop does this every second
        assert run.spool.writable
        run.spool.append("test", NewSegment.of([hit(3)]))
        wait_until(
            lambda: run.value("tailhook_webhook_events_delivered_total", event_type="hit") == 3,
            5,
            "later events to be delivered",
        )
    assert sorted(ids_received(receiver).values()) == [1, 1]
    assert [len(body) for body in receiver.bodies_json()] == [2, 1]


def test_a_delivery_unrecorded_at_a_stop_is_sent_once_more_at_the_next_start(
    tmp_path: Path, receiver: Receiver
) -> None:
    hook = webhook(receiver.url)
    lock = SpoolLock(tmp_path)
    with running_sink(tmp_path, hook) as run:
        receiver.answer_with(lock_then(lock, 200))
        run.spool.append("test", NewSegment.of([hit(1)]))
        assert receiver.wait_for(1, timeout=5)
        wait_until(lambda: not run.spool.writable, 5, "the spool write to fail")
    lock.release()  # the store recovers while tailhook is stopped
    (first,) = ids_received(receiver)
    with running_sink(tmp_path, hook) as run:
        wait_until(lambda: run.spool.open_batch("soc") is None, 5, "the batch to be finished")
        assert not receiver.wait_for(3, timeout=1.0)
    assert ids_received(receiver) == {first: 2}


def test_a_dead_letter_written_before_the_spool_failed_is_not_written_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    with running_sink(tmp_path, webhook(receiver.url)) as run:
        lock = SpoolLock(tmp_path)
        receiver.answer_with(lock_then(lock, 400))
        run.spool.append("test", NewSegment.of([hit(1)]))
        wait_until(lambda: not run.spool.writable, 5, "the spool write to fail")
        assert not receiver.wait_for(2, timeout=2.5), "the refused batch was sent again"
        lock.release()
        wait_until(lambda: run.spool.backlog("soc") == 0, 5, "the dead letter to be recorded")
        assert run.value("tailhook_webhook_events_dead_lettered_total", reason="rejected") == 1
    assert len(receiver.requests) == 1
    assert [letter["events"] for letter in dead_letters(tmp_path)] == [[json.loads(hit(1)[1])]]


# --- a dead letter cannot be written ----------------------------------------------------


def test_a_dead_letter_that_cannot_be_written_keeps_the_batch_without_resending_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "dead-letter" / "soc.jsonl"
    blocker.mkdir(parents=True)  # the dead-letter file is a directory: writing it fails
    caplog.set_level(logging.WARNING)
    with Receiver(400) as refusing:
        with running_sink(tmp_path, webhook(refusing.url), [hit(1)]) as run:
            assert refusing.wait_for(1, timeout=5)
            assert not refusing.wait_for(2, timeout=2.5), "the refused batch was sent again"
            assert "A dead letter cannot be written" in caplog.text
            assert run.spool.backlog("soc") == 1
            assert run.value("tailhook_webhook_events_dead_lettered_total", reason="rejected") == 0
            blocker.rmdir()
            wait_until(lambda: run.spool.backlog("soc") == 0, 5, "the dead letter")
            assert run.value("tailhook_webhook_events_dead_lettered_total", reason="rejected") == 1
        assert len(refusing.requests) == 1
    (letter,) = dead_letters(tmp_path)
    assert (letter["reason"], letter["status"]) == ("rejected", 400)
    assert letter["webhook_id"] == refusing.requests[0].headers["webhook-id"]
    failures = [r for r in caplog.records if "A dead letter cannot be written" in r.message]
    assert len(failures) == 1  # once per outage, not once per try
    assert any("Dead letters can be written again" in r.message for r in caplog.records)


# --- a batch found expired at start -------------------------------------------------------


def record_a_batch_long_ago(state_dir: Path, hook: WebhookConfig, age: float) -> str:
    """Record a batch as a stopped agent leaves one in flight, ``age`` seconds old."""
    spool = open_spool(state_dir, hook, Metrics(CollectorRegistry()))
    spool.append("test", NewSegment.of([hit(1), hit(2)]))
    batch = spool.next_batch("soc", 500, 1 << 20)
    spool.close()
    assert batch is not None
    with sqlite3.connect(state_dir / "spool.db") as db:
        db.execute("UPDATE batches SET created = created - ?", (age,))
    db.close()
    return batch.webhook_id


@pytest.mark.parametrize(("status", "outcome"), [(200, "delivered"), (503, "expired")])
def test_a_batch_found_expired_at_start_is_tried_once(
    tmp_path: Path, status: int, outcome: str
) -> None:
    hook = webhook("http://127.0.0.1:1/unused", retry=replace(QUICK_RETRY, max_elapsed=3600))
    webhook_id = record_a_batch_long_ago(tmp_path, hook, age=7200)
    with Receiver(status) as receiver:
        with running_sink(tmp_path, replace(hook, url=receiver.url)) as run:
            wait_until(lambda: run.spool.backlog("soc") == 0, 5, "the batch to be finished")
            assert not receiver.wait_for(2, timeout=0.5)
            delivered = run.value("tailhook_webhook_events_delivered_total", event_type="hit")
            expired = run.value("tailhook_webhook_events_dead_lettered_total", reason="expired")
        assert ids_received(receiver) == {webhook_id: 1}
    if outcome == "delivered":
        assert (delivered, expired) == (2, 0)
        assert not (tmp_path / "dead-letter" / "soc.jsonl").exists()
    else:
        assert (delivered, expired) == (0, 2)
        (letter,) = dead_letters(tmp_path)
        assert (letter["reason"], letter["status"], letter["webhook_id"]) == (
            "expired",
            503,
            webhook_id,
        )
