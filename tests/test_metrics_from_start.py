"""Metrics an operator can alert on from the first event (CONTRACT §7): every label set
known when a source or webhook starts is exported at 0 (at start and after a reload
that adds one), no ``*_created`` series, and a removed webhook's or source's gauges
go instead of keeping an alert firing on their last value."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from agent.config import Config, FileSourceConfig, SocketSourceConfig, WebhookConfig
from agent.errors import REJECT_REASONS
from agent.formats import EVENT_TYPES
from agent.service import Agent
from tests.agent_support import file_config, hit_line, running_agent, wait_until
from tests.support.receiver import Receiver

OUTCOMES = ("accepted", *REJECT_REASONS)


def sample(agent: Agent | CollectorRegistry, name: str, **labels: str) -> float | None:
    registry = agent if isinstance(agent, CollectorRegistry) else agent.registry
    return registry.get_sample_value(name, labels)


def source_series(source: str) -> list[tuple[str, dict[str, str]]]:
    """What a source exports at 0 before its first line."""
    series = [
        ("tailhook_source_lines_total", {"source": source}),
        ("tailhook_source_bytes_total", {"source": source}),
    ]
    for event_type in EVENT_TYPES:
        for outcome in ("accepted", "invalid_schema"):
            labels = {"source": source, "event_type": event_type, "outcome": outcome}
            series.append(("tailhook_events_total", labels))
    for outcome in REJECT_REASONS:
        labels = {"source": source, "event_type": "unknown", "outcome": outcome}
        series.append(("tailhook_events_total", labels))
    for reason in ("permission", "not_found", "io"):
        series.append(("tailhook_source_errors_total", {"source": source, "reason": reason}))
    return series


def file_source_series(source: str) -> list[tuple[str, dict[str, str]]]:
    return [
        *source_series(source),
        ("tailhook_file_truncations_total", {"source": source}),
        ("tailhook_file_lag_bytes", {"source": source}),
        ("tailhook_source_files", {"source": source}),
    ]


def socket_source_series(source: str) -> list[tuple[str, dict[str, str]]]:
    names = (
        "tailhook_socket_connections",
        "tailhook_socket_connections_refused_total",
        "tailhook_socket_connections_idle_closed_total",
        "tailhook_socket_fragments_dropped_total",
    )
    return [*source_series(source), *((name, {"source": source}) for name in names)]


def webhook_series(webhook: str, event_types: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """What a webhook exports at 0 before its first request."""
    series: list[tuple[str, dict[str, str]]] = []
    for event_type in event_types:
        labels = {"webhook": webhook, "event_type": event_type}
        series.append(("tailhook_webhook_events_delivered_total", labels))
        series.append(("tailhook_webhook_events_filtered_total", labels))
    for reason in ("rejected", "expired"):
        labels = {"webhook": webhook, "reason": reason}
        series.append(("tailhook_webhook_events_dead_lettered_total", labels))
    for reason in ("deleted", "disabled"):
        series.append(
            ("tailhook_webhook_events_discarded_total", {"webhook": webhook, "reason": reason})
        )
    for code in ("timeout", "connection", "tls"):
        series.append(("tailhook_webhook_requests_total", {"webhook": webhook, "code": code}))
    for name in (
        "tailhook_webhook_retries_total",
        "tailhook_webhook_request_duration_seconds_count",
        "tailhook_webhook_backlog_events",
        "tailhook_webhook_oldest_event_age_seconds",
    ):
        series.append((name, {"webhook": webhook}))
    return series


def missing_or_not_zero(
    agent: Agent, series: list[tuple[str, dict[str, str]]]
) -> list[tuple[str, dict[str, str], float | None]]:
    return [
        (name, labels, value)
        for name, labels in series
        if (value := sample(agent, name, **labels)) != 0.0
    ]


def two_sources_two_webhooks(tmp_path: Path, url: str) -> Config:
    base = file_config(tmp_path, url, (str(tmp_path / "logs" / "*.log"),))
    socket = SocketSourceConfig(name="node", path=str(tmp_path / "run" / "waf.sock"))
    siem = WebhookConfig(name="siem", url=url, events=frozenset({"hit", "system"}))
    return replace(base, sources=(*base.sources, socket), webhooks=(*base.webhooks, siem))


def test_every_label_set_known_at_start_is_exported_at_zero(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = two_sources_two_webhooks(tmp_path, receiver.url)
    with running_agent(config) as agent:
        expected = [
            *file_source_series("waf"),
            *socket_source_series("node"),
            *webhook_series("soc", EVENT_TYPES),
            *webhook_series("siem", ("hit", "system")),
        ]
        assert missing_or_not_zero(agent, expected) == []
        # A webhook exports only the event types it takes: the others can never occur.
        labels = {"webhook": "siem", "event_type": "scope"}
        assert sample(agent, "tailhook_webhook_events_delivered_total", **labels) is None


def test_a_webhook_and_a_source_added_by_a_reload_are_exported_at_zero(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = file_config(tmp_path, receiver.url, (str(tmp_path / "a" / "*.log"),))
    with running_agent(config) as agent:
        added_source = FileSourceConfig(name="edge", paths=(str(tmp_path / "b" / "*.log"),))
        added_hook = WebhookConfig(name="pager", url=receiver.url, events=frozenset({"system"}))
        agent.apply(
            replace(
                config,
                sources=(*config.sources, added_source),
                webhooks=(*config.webhooks, added_hook),
            )
        )
        expected = [*file_source_series("edge"), *webhook_series("pager", ("system",))]
        assert missing_or_not_zero(agent, expected) == []


def test_the_first_event_is_an_increase_from_zero(tmp_path: Path, receiver: Receiver) -> None:
    """What ``increase()`` needs: the series exists at 0 before the first event."""
    log = tmp_path / "detections.log"
    log.touch()
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config) as agent:
        before = sample(
            agent, "tailhook_webhook_events_delivered_total", webhook="soc", event_type="hit"
        )
        log.write_bytes(hit_line(1) + b"\n")
        assert receiver.wait_for(1, 10)
        labels = {"webhook": "soc", "event_type": "hit"}
        assert wait_until(
            lambda: sample(agent, "tailhook_webhook_events_delivered_total", **labels) == 1.0, 5
        )
    assert before == 0.0


def test_no_created_series_are_exported(tmp_path: Path, receiver: Receiver) -> None:
    config = file_config(tmp_path, receiver.url, (str(tmp_path / "*.log"),))
    with running_agent(config) as agent:
        text = generate_latest(agent.registry).decode()
    assert "tailhook_events_total{" in text
    assert "_created" not in text


def test_a_removed_webhooks_and_sources_gauges_go_and_the_kept_ones_stay(
    tmp_path: Path,
) -> None:
    """A deleted webhook's backlog (and its oldest event's age) must not stay at their
    last value: an alert on them would fire until the next restart."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    with Receiver() as soc, Receiver() as dead:
        dead.answer_with(503)
        config = file_config(tmp_path, soc.url, (str(logs / "*.log"),))
        other = FileSourceConfig(name="edge", paths=(str(tmp_path / "edge" / "*.log"),))
        failing = WebhookConfig(name="dead", url=dead.url, events=frozenset({"hit"}))
        config = replace(
            config, sources=(*config.sources, other), webhooks=(*config.webhooks, failing)
        )
        with running_agent(config) as agent:
            assert wait_until(
                lambda: sample(agent, "tailhook_webhook_backlog_events", webhook="dead") == 3.0,
                10,
            )
            assert sample(agent, "tailhook_source_files", source="edge") == 0.0
            agent.apply(replace(config, sources=config.sources[:1], webhooks=config.webhooks[:1]))
            # A mark the gauge loop (every second) overwrites: seen gone, a tick has run
            # since the reload, and it did not bring the removed webhook's gauges back.
            agent.metrics.backlog.labels(webhook="soc").set(-1)
            assert wait_until(
                lambda: sample(agent, "tailhook_webhook_backlog_events", webhook="soc") == 0.0, 5
            )
            assert sample(agent, "tailhook_webhook_backlog_events", webhook="dead") is None
            assert (
                sample(agent, "tailhook_webhook_oldest_event_age_seconds", webhook="dead") is None
            )
            assert sample(agent, "tailhook_source_files", source="edge") is None
            assert sample(agent, "tailhook_source_files", source="waf") == 1.0
            # Counters stay: what was counted is still true.
            labels = {"webhook": "dead", "reason": "deleted"}
            assert sample(agent, "tailhook_webhook_events_discarded_total", **labels) == 3.0
