"""``Agent.apply``: the integration lifecycle on a running agent, with real receivers
and real files. What each receiver got is the assertion: every event at every webhook,
in order, with the ``webhook-id`` of a batch unchanged across a reload."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from agent.config import Config, FileSourceConfig, RetryConfig, WebhookConfig
from agent.service import Agent
from tests.agent_support import (
    file_config,
    hit_line,
    received_ids,
    running_agent,
    wait_until,
)
from tests.support.receiver import Receiver


def lines(numbers: Iterable[int]) -> bytes:
    return b"".join(hit_line(n) + b"\n" for n in numbers)


def append(path: Path, numbers: Iterable[int]) -> None:
    with path.open("ab") as out:
        out.write(lines(numbers))


def ids(numbers: Iterable[int]) -> list[str]:
    return [f"hit-{n}" for n in numbers]


def hits(receiver: Receiver) -> list[str]:
    return received_ids(receiver.bodies_json())


def system_events(receiver: Receiver) -> list[tuple[str, str]]:
    return [
        (obj["notification_type"], obj["details"]["integration"]["name"])
        for body in receiver.bodies_json()
        for obj in body
        if obj["object_type"] == "system"
    ]


def with_webhooks(config: Config, *webhooks: WebhookConfig) -> Config:
    return replace(config, webhooks=webhooks)


def accepted_lines(agent: Agent) -> float:
    labels = {"source": "waf", "event_type": "hit", "outcome": "accepted"}
    return agent.registry.get_sample_value("tailhook_events_total", labels) or 0.0


def archive(url: str) -> WebhookConfig:
    return WebhookConfig(name="archive", url=url, events=frozenset({"system"}))


def test_disable_re_enable_and_delete_a_webhook_while_it_runs(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    append(log, range(5))
    with Receiver() as soc_receiver, Receiver() as archive_receiver:
        base = file_config(tmp_path, soc_receiver.url, (str(log),))
        (soc,) = base.webhooks
        config = with_webhooks(base, soc, archive(archive_receiver.url))
        with running_agent(config) as agent:
            assert soc_receiver.wait_for(lambda _: hits(soc_receiver) == ids(range(5)), 10)
            # A backlog builds while soc refuses; disabling it drops the backlog, counted.
            soc_receiver.answer_with(503)
            append(log, range(5, 10))
            assert agent.spool is not None
            spool = agent.spool
            assert wait_until(lambda: accepted_lines(agent) == 10 == spool.backlog("soc") * 2, 10)
            agent.apply(with_webhooks(config, replace(soc, enabled=False), config.webhooks[1]))
            assert archive_receiver.wait_for(1, 10)
            assert system_events(archive_receiver) == [("disable_integration", "soc")]
            discarded = agent.registry.get_sample_value(
                "tailhook_webhook_events_discarded_total", {"webhook": "soc", "reason": "disabled"}
            )
            assert discarded == 5
            assert [s.name for s in agent.sinks] == ["archive"]
            # Disabled, it keeps nothing: what arrives meanwhile is never sent to it.
            append(log, range(10, 15))
            assert wait_until(lambda: accepted_lines(agent) == 15, 10)
            soc_receiver.answer_with(200)
            # Re-enabled, it takes what arrives from now on.
            agent.apply(config)
            append(log, range(15, 20))
            assert soc_receiver.wait_for(
                lambda _: set(ids(range(15, 20))) <= set(hits(soc_receiver)), 10
            )
            agent.apply(with_webhooks(config, config.webhooks[1]))
            assert archive_receiver.wait_for(2, 10)
            assert [s.name for s in agent.sinks] == ["archive"]
        assert system_events(archive_receiver) == [
            ("disable_integration", "soc"),
            ("delete_integration", "soc"),
        ]
    accepted = [i for i in hits(soc_receiver) if i in ids(range(20))]
    assert accepted[:5] == ids(range(5))
    assert not set(accepted) & set(ids(range(10, 15))), "sent while disabled"
    assert set(accepted) - set(ids(range(10))) == set(ids(range(15, 20)))


def test_a_new_url_takes_the_queue_and_the_batch_in_flight_with_its_id(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    with Receiver() as old, Receiver() as new:
        old.answer_with(503)
        config = file_config(tmp_path, old.url, (str(log),))
        (soc,) = config.webhooks
        with running_agent(config) as agent:
            append(log, range(5))
            assert old.wait_for(2, 10)  # the batch is in flight and being retried
            in_flight = old.requests[0].headers["webhook-id"]
            agent.apply(with_webhooks(config, replace(soc, url=new.url)))
            append(log, range(5, 8))
            assert new.wait_for(lambda _: hits(new) == ids(range(8)), 10), hits(new)
        assert new.requests[0].headers["webhook-id"] == in_flight
        assert new.requests[0].json() == old.requests[0].json()


def test_an_unchanged_webhook_is_untouched_by_a_reload_of_another(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    with Receiver() as steady, Receiver() as other:
        steady.answer_with(503)
        config = file_config(tmp_path, steady.url, (str(log),))
        (soc,) = config.webhooks
        second = replace(soc, name="other", url=other.url)
        config = with_webhooks(config, soc, second)
        with running_agent(config) as agent:
            append(log, range(5))
            assert steady.wait_for(2, 10)
            (sink,) = [s for s in agent.sinks if s.name == "soc"]
            agent.apply(with_webhooks(config, soc, replace(second, request_timeout=3.0)))
            agent.apply(with_webhooks(config, soc))
            assert [s for s in agent.sinks if s.name == "soc"] == [sink]  # the same thread
            steady.answer_with(200)
            append(log, range(5, 8))
            assert steady.wait_for(lambda _: set(ids(range(8))) <= set(hits(steady)), 10)
    first_batch = {r.headers["webhook-id"] for r in steady.requests if "hit-0" in str(r.json())}
    assert len(first_batch) == 1, "the batch in flight kept its id across the reloads"


def test_a_source_whose_paths_change_restarts_from_its_checkpoints(
    tmp_path: Path, receiver: Receiver
) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    append(first, range(10))
    append(second, range(100, 105))
    config = file_config(tmp_path, receiver.url, (str(first),))
    (waf,) = config.sources
    assert isinstance(waf, FileSourceConfig)
    with running_agent(config) as agent:
        assert receiver.wait_for(lambda _: hits(receiver) == ids(range(10)), 10)
        append(first, range(10, 20))  # perhaps read before, perhaps after the restart
        agent.apply(replace(config, sources=(replace(waf, paths=(str(first), str(second))),)))
        append(first, range(20, 25))
        wanted = set(ids([*range(25), *range(100, 105)]))
        assert receiver.wait_for(lambda _: wanted <= set(hits(receiver)), 10)
        assert wait_until(lambda: agent.spool is not None and agent.spool.backlog("soc") == 0, 5)
    got = hits(receiver)
    assert sorted(got) == sorted(wanted), "a line was lost or read twice across the restart"
    assert [i for i in got if i in ids(range(25))] == ids(range(25))


def test_a_webhook_failing_past_max_elapsed_is_announced_once(
    tmp_path: Path, closed_port: int
) -> None:
    log = tmp_path / "detections.log"
    with Receiver() as archive_receiver:
        base = file_config(tmp_path, f"http://127.0.0.1:{closed_port}/", (str(log),))
        (soc,) = base.webhooks
        failing = replace(
            soc,
            batch=replace(soc.batch, max_events=1),
            retry=RetryConfig(initial_backoff=0.05, max_backoff=0.1, max_elapsed=0.5),
        )
        config = with_webhooks(base, failing, archive(archive_receiver.url))
        with running_agent(config) as agent:
            append(log, range(4))
            expired = {"webhook": "soc", "reason": "expired"}
            assert wait_until(
                lambda: (
                    agent.registry.get_sample_value(
                        "tailhook_webhook_events_dead_lettered_total", expired
                    )
                    == 4
                ),
                15,
            )
            assert archive_receiver.wait_for(1, 5)
        assert system_events(archive_receiver) == [("integration_broken", "soc")]
        (notification,) = archive_receiver.requests[0].json()
        assert notification["summary"] == "Integration is not working"
        assert notification["description"] == "The integration soc (webhook) is not working."


def test_a_broken_webhook_that_recovers_is_announced_again_at_its_next_outage(
    tmp_path: Path,
) -> None:
    log = tmp_path / "detections.log"
    with Receiver() as flaky, Receiver() as archive_receiver:
        flaky.answer_with(503)
        base = file_config(tmp_path, flaky.url, (str(log),))
        (soc,) = base.webhooks
        failing = replace(
            soc, retry=RetryConfig(initial_backoff=0.05, max_backoff=0.1, max_elapsed=0.5)
        )
        config = with_webhooks(base, failing, archive(archive_receiver.url))
        with running_agent(config):
            append(log, [0])
            assert archive_receiver.wait_for(1, 10)
            flaky.answer_with(200)
            append(log, [1])
            assert flaky.wait_for(lambda _: "hit-1" in hits(flaky), 10)
            flaky.answer_with(503)
            append(log, [2])
            assert archive_receiver.wait_for(2, 10)
    assert system_events(archive_receiver) == [("integration_broken", "soc")] * 2
