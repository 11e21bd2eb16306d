"""Running a webhook sink against a real spool, for delivery tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.config import WebhookConfig
from agent.sinks.webhook import WebhookSink
from agent.spool import NewSegment, Spool
from agent.telemetry import Metrics


@dataclass
class Running:
    sinks: list[WebhookSink]
    spool: Spool
    metrics: Metrics
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def running_sinks(
    state_dir: Path, hooks: Sequence[WebhookConfig], events: Sequence[tuple[str, bytes]]
) -> Iterator[Running]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    spool = Spool(state_dir / "spool.db", metrics)
    spool.configure_webhooks({hook.name: hook.events for hook in hooks if hook.enabled})
    spool.append("test", NewSegment.of(events))
    sinks = [WebhookSink(hook, spool, metrics, state_dir) for hook in hooks if hook.enabled]
    for sink in sinks:
        sink.start()
    try:
        yield Running(sinks, spool, metrics, registry)
    finally:
        for sink in sinks:
            sink.stop()
        for sink in sinks:
            sink.join(10)
        spool.close()


def hit(n: int) -> tuple[str, bytes]:
    return "hit", b'{"object_type":"hit","n":%d}' % n


def scope(n: int) -> tuple[str, bytes]:
    return "scope", b'{"object_type":"scope","n":%d}' % n
