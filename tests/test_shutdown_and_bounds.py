"""SIGTERM, a full spool, and one failing webhook beside a healthy one."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import BatchConfig, RetryConfig, SpoolConfig
from agent.service import Agent
from tests.agent_support import ALL, file_config, hit_line, received_ids, wait_until
from tests.support.receiver import Receiver, Response
from tests.test_end_to_end import tailhook_run

#: spool.max_bytes's smallest value.
SMALL = 2 * 1024 * 1024

CONFIG = """\
state_dir: {state}
metrics: {{listen: "127.0.0.1:0"}}
sources: [{{name: waf, type: file, paths: ["{log}"]}}]
webhooks:
  - {{name: soc, url: "{url}", events: [hit], batch: {{max_events: 1, max_wait: 10ms}}}}
shutdown_timeout: {shutdown}
"""


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_keeps_the_rest_and_exits_0(
    tmp_path: Path,
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(10)))
    config = tmp_path / "config.yaml"
    with Receiver(Response(200, delay=1.5)) as slow:
        config.write_text(
            CONFIG.format(state=tmp_path / "state", log=log, url=slow.url, shutdown="2s")
        )
        with tailhook_run(config, {}) as (process, _):
            assert slow.wait_for(1, timeout=10)  # the first request is in flight
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            took = time.monotonic() - stopping
        first = slow.requests[0]
        sent_before_stop = len(slow.requests)
        # In flight at SIGTERM, it was answered; within 2 s a second one could start.
        assert 1.0 < took < 2.0 + 1.5 + 1.0
        assert sent_before_stop < 10
        slow.answer_with(200)
        with tailhook_run(config, {}) as (process, _):
            assert wait_until(lambda: len(set(received_ids(slow.bodies_json()))) == 10, 15)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
    assert set(received_ids(slow.bodies_json())) == {f"hit-{n}" for n in range(10)}
    assert received_ids([first.json()]) == ["hit-0"]


def test_a_full_spool_with_block_stops_reading_and_resumes_without_skipping(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    hook = base.webhooks[0]
    config = type(base)(
        **{
            **base.__dict__,
            "spool": SpoolConfig(max_bytes=SMALL, when_full="block"),
            "webhooks": (
                type(hook)(**{**hook.__dict__, "batch": BatchConfig(max_events=50, max_wait=0.01)}),
            ),
        }
    )
    receiver.answer_with(503)
    caplog.set_level(logging.WARNING, logger="agent.spool")
    agent = Agent(config, CollectorRegistry())
    agent.start()
    try:
        with log.open("ab") as out:
            for n in range(4000):  # ~2.8 MB to keep, five times the spool's room
                out.write(hit_line(n) + b"\n")
        assert agent.spool is not None
        assert wait_until(lambda: "The spool is full; sources wait" in caplog.text, 10)
        # Reading stopped: the spool holds what fits in its share of max_bytes, and the
        # offset kept for the file is far from its end (the rest waits in the file).
        budget = agent.spool.budget
        assert agent.spool.held_bytes <= budget.database_pages * budget.page_size
        [offset] = [c.offset for c in agent.spool.checkpoints("waf").values() if c.path]
        assert offset < log.stat().st_size / 2
        receiver.answer_with(200)
        everything = {f"hit-{n}" for n in range(4000)}
        assert wait_until(lambda: set(received_ids(receiver.bodies_json())) >= everything, 30)
        assert agent.registry.get_sample_value("tailhook_spool_dropped_events_total") == 0
    finally:
        agent.stop()


def test_a_webhook_answering_503_does_not_slow_another(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    healthy = base.webhooks[0]
    with Receiver(503) as failing:
        broken = type(healthy)(
            name="broken",
            url=failing.url,
            events=ALL,
            batch=BatchConfig(max_events=1, max_wait=0.01),
            retry=RetryConfig(initial_backoff=0.01, max_backoff=0.02, max_elapsed=3600),
        )
        config = type(base)(**{**base.__dict__, "webhooks": (healthy, broken)})
        agent = Agent(config, CollectorRegistry())
        agent.start()
        try:
            with log.open("ab") as out:
                out.write(hit_line(1000) + b"\n")
            assert failing.wait_for(20, timeout=10)  # it is failing, and retrying hard
            latencies = []
            for n in range(20):
                written = time.monotonic()
                with log.open("ab") as out:
                    out.write(hit_line(n) + b"\n")
                assert receiver.wait_for(
                    lambda reqs, n=n: f"hit-{n}" in received_ids([r.json() for r in reqs]), 10
                )
                latencies.append(time.monotonic() - written)
            retries = agent.registry.get_sample_value(
                "tailhook_webhook_retries_total", {"webhook": "broken"}
            )
        finally:
            agent.stop()
    # Each event reached the healthy webhook about as fast as the file is watched and a
    # batch forms (max_wait 50 ms), not at the failing webhook's pace.
    assert sorted(latencies)[len(latencies) // 2] < 1.0
    assert retries is not None and retries >= 20


def test_backlog_and_oldest_age_gauges_follow_what_is_undelivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(7)))
    receiver.answer_with(503)
    agent = Agent(file_config(tmp_path, receiver.url, (str(log),)), CollectorRegistry())
    agent.start()
    try:

        def gauge(name: str) -> float:
            return agent.registry.get_sample_value(name, {"webhook": "soc"}) or 0.0

        assert wait_until(lambda: gauge("tailhook_webhook_backlog_events") == 7, 10)
        assert wait_until(lambda: gauge("tailhook_webhook_oldest_event_age_seconds") >= 1.0, 10)
        receiver.answer_with(200)
        assert wait_until(lambda: gauge("tailhook_webhook_backlog_events") == 0, 10)
        assert wait_until(lambda: gauge("tailhook_webhook_oldest_event_age_seconds") == 0, 10)
    finally:
        agent.stop()


def test_drop_oldest_counts_every_dropped_event(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    base = file_config(tmp_path, receiver.url, (str(log),))
    config = type(base)(
        **{**base.__dict__, "spool": SpoolConfig(max_bytes=SMALL, when_full="drop_oldest")}
    )
    receiver.answer_with(503)
    agent = Agent(config, CollectorRegistry())
    agent.start()
    try:
        for n in range(3000):
            with log.open("ab") as out:
                out.write(hit_line(n) + b"\n")
        size = log.stat().st_size
        assert agent.spool is not None

        def read_to_the_end() -> bool:
            assert agent.spool is not None
            offsets = [c.offset for c in agent.spool.checkpoints("waf").values() if c.path]
            return offsets == [size]

        assert wait_until(read_to_the_end, 20)
        budget = agent.spool.budget
        assert agent.spool.held_bytes <= budget.database_pages * budget.page_size
        dropped = agent.registry.get_sample_value("tailhook_spool_dropped_events_total") or 0
        assert dropped > 1500
        receiver.answer_with(200)
        assert wait_until(lambda: agent.spool is not None and agent.spool.backlog("soc") == 0, 10)
        # Every event was delivered or counted as dropped, never both: the events of the
        # batch in flight when the drops began were still delivered, and not counted.
        got = set(received_ids(receiver.bodies_json()))
        assert len(got) + dropped == 3000
    finally:
        agent.stop()
