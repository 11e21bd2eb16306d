"""A stuck loop stops systemd's watchdog pings; an idle, backing-off or spool-blocked one
does not. In-process agents with real files, a real receiver, a real spool and a real
notify socket; the stuck loop is a thread really blocked (on an Event) inside a step."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from agent.config import BatchConfig, SpoolConfig
from agent.notify import Notifier, StatusLine, Watchdog
from agent.service import Agent
from agent.sinks.transport import Answer
from agent.worker import Worker, heartbeat, loop_problems
from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.notify_socket import Datagram, NotifySocket
from tests.support.receiver import Receiver, Response

HALF = 0.2  # WATCHDOG_USEC=400000: a ping every 0.2 s
#: Once unhealthy is reported, five half-intervals in which no ping may come: a loop
#: that went on pinging would send about five.
NO_PING_WINDOW = 5 * HALF


class Blocking(Worker):
    """A loop whose step blocks until ``release`` is set, or pauses, or waits while
    calling ``heartbeat()`` as the spool does while it is full."""

    def __init__(self, how: str) -> None:
        super().__init__("blocking", {})
        self.name = "blocking"
        self.how = how
        self.step_budget = 0.3
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self) -> bool:
        self.entered.set()
        if self.how == "pause":
            return self.pause(30)
        if self.how == "heartbeat":
            while not self.release.wait(0.05):
                heartbeat()
            return False
        self.release.wait(30)
        return False


@pytest.mark.parametrize("how", ["block", "pause", "heartbeat"])
def test_only_a_step_blocked_past_its_budget_is_stuck(how: str) -> None:
    worker = Blocking(how)
    worker.start()
    try:
        assert worker.entered.wait(5)
        if how == "block":
            assert wait_until(lambda: worker.overdue(time.monotonic()) > 0, 5)
            [problem] = loop_problems([worker], time.monotonic())
            assert problem.startswith("blocking stuck for ")
        else:  # a pause or a heartbeat-refreshed wait, six budgets long: never stuck
            until = time.monotonic() + 6 * worker.step_budget
            while time.monotonic() < until:
                assert loop_problems([worker], time.monotonic()) == []
                time.sleep(0.02)
    finally:
        worker.release.set()
        worker.stop()
        worker.join(5)
    assert loop_problems([worker], time.monotonic()) == ["blocking stopped"]


@contextmanager
def watched(agent: Agent, systemd: NotifySocket) -> Iterator[Watchdog]:
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": systemd.env, "WATCHDOG_USEC": str(int(2 * HALF * 1e6))}
    )
    watchdog = Watchdog(notifier, agent.healthy, StatusLine(agent.metrics).text, 0.5)
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()


def pings_after(systemd: NotifySocket, at: float) -> int:
    return len([d for d in systemd.with_key("WATCHDOG") if d.at > at])


@pytest.mark.slow
def test_a_stuck_webhook_loop_stops_the_pings_and_fails_healthz_an_idle_one_does_not(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    config = file_config(tmp_path, receiver.url, (str(log),))
    with (
        running_agent(config) as agent,
        NotifySocket(tmp_path / "notify") as systemd,
        watched(agent, systemd),
    ):
        [source], [sink] = agent.sources, agent.sinks
        assert isinstance(source, Worker)
        # Budgets a little over an idle step (each waits 1 s for news) keep the test short.
        source.step_budget = sink.step_budget = 1.5
        healthz = f"http://127.0.0.1:{agent.server.port if agent.server else 0}/healthz"

        # Idle for twice the budget: healthy all along, pings every half interval.
        start = time.monotonic()
        while time.monotonic() - start < 2 * sink.step_budget:
            assert agent.healthy() == (True, "ok")
            time.sleep(0.02)
        assert pings_after(systemd, start) >= 2 * sink.step_budget / HALF / 2
        assert requests.get(healthz, timeout=5).status_code == 200

        # The webhook loop gets stuck in the middle of a request.
        release = threading.Event()
        send = sink.transport.send

        def stuck_send(body: bytes, headers: dict[str, str], cut: float | None = None) -> Answer:
            release.wait(60)
            return send(body, headers, cut)

        sink.transport.send = stuck_send  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="agent.notify"):
            with log.open("ab") as out:
                out.write(hit_line(1) + b"\n")
            stuck = first_status(systemd, "unhealthy: ")
            assert "soc stuck for" in stuck.fields["STATUS"]
            assert agent.healthy()[0] is False
            answer = requests.get(healthz, timeout=5)
            assert answer.status_code == 503 and "soc stuck for" in answer.text
            assert "waf" not in answer.text  # the source is fine
            time.sleep(NO_PING_WINDOW)
            assert pings_after(systemd, stuck.at) == 0
        assert any("no longer pinged" in r.message for r in caplog.records)

        # Unstuck: the batch goes out and the pings come back.
        resumed = time.monotonic()
        release.set()
        assert receiver.wait_for(1, timeout=10)
        assert received_ids(receiver.bodies_json()) == ["hit-1"]
        assert wait_until(lambda: pings_after(systemd, resumed) >= 2, 5)
        assert requests.get(healthz, timeout=5).status_code == 200


def first_status(systemd: NotifySocket, prefix: str) -> Datagram:
    """Waits for a ``STATUS=`` starting with ``prefix``."""

    def found() -> list[Datagram]:
        return [d for d in systemd.with_key("STATUS") if d.fields["STATUS"].startswith(prefix)]

    assert wait_until(lambda: bool(found()), 10), systemd.raw()
    return found()[0]


@pytest.mark.slow
def test_a_source_waiting_for_room_in_a_full_spool_keeps_the_pings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    with Receiver(503) as failing:  # nothing is delivered: the spool stays full
        base = file_config(tmp_path, failing.url, (str(log),))
        config = replace(
            base,
            spool=SpoolConfig(max_bytes=20_000, when_full="block"),
            webhooks=(replace(base.webhooks[0], batch=BatchConfig(max_events=50)),),
        )
        with (
            caplog.at_level(logging.WARNING, logger="agent.spool"),
            running_agent(config) as agent,
            NotifySocket(tmp_path / "notify") as systemd,
            watched(agent, systemd),
        ):
            [source] = agent.sources
            assert isinstance(source, Worker)
            source.step_budget = 0.5
            with log.open("ab") as out:
                for n in range(400):  # ~200 KB of hits, ten times the spool
                    out.write(hit_line(n) + b"\n")
            assert wait_until(lambda: "The spool is full" in caplog.text, 10)
            blocked = time.monotonic()
            # Four budgets of waiting for room: the source is waiting, not stuck.
            while time.monotonic() - blocked < 4 * source.step_budget:
                assert agent.healthy() == (True, "ok")
                time.sleep(0.02)
            assert pings_after(systemd, blocked) >= 2 * source.step_budget / HALF
            assert systemd.with_key("STATUS")[-1].fields["STATUS"].endswith("failing webhooks: soc")


@pytest.mark.slow
def test_a_slow_answer_within_request_timeout_is_not_a_stuck_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every loop may take 1.2 s a step (an idle step takes 1 s); a webhook adds its own
    # timeouts, so a 2.5 s answer within request_timeout: 5s is not being stuck.
    monkeypatch.setattr("agent.worker.STEP_BUDGET", 1.2)
    log = tmp_path / "detections.log"
    log.write_bytes(b"")
    with Receiver(Response(200, delay=2.5)) as slow:
        base = file_config(tmp_path, slow.url, (str(log),))
        config = replace(base, webhooks=(replace(base.webhooks[0], request_timeout=5.0),))
        with running_agent(config) as agent:
            with log.open("ab") as out:
                out.write(hit_line(1) + b"\n")
            assert slow.wait_for(1, timeout=10)  # the request is in flight
            until = time.monotonic() + 3.0  # past the answer
            while time.monotonic() < until:
                assert agent.healthy() == (True, "ok")
                time.sleep(0.02)
            assert (
                agent.registry.get_sample_value(
                    "tailhook_webhook_events_delivered_total",
                    {"webhook": "soc", "event_type": "hit"},
                )
                == 1
            )
