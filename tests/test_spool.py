"""The spool: events and checkpoints together, per-webhook cursors, stable batches."""

from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.config import WebhookConfig
from agent.sinks.webhook import form_batch
from agent.spool import Checkpoint, Spool
from agent.telemetry import Metrics


def open_spool(path: Path, **kwargs: object) -> Spool:
    return Spool(path / "spool.db", Metrics(CollectorRegistry()), **kwargs)  # type: ignore[arg-type]


def hook(name: str, *events: str, max_events: int = 500) -> WebhookConfig:
    from agent.config import BatchConfig

    return WebhookConfig(
        name=name,
        url="http://127.0.0.1:9/",
        events=frozenset(events),
        batch=BatchConfig(max_events=max_events),
    )


def test_checkpoint_and_events_survive_a_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    checkpoint = Checkpoint("1:2", "/x.log", 120, b"{")
    spool.append("src", [("hit", b'{"n":1}'), ("hit", b'{"n":2}')], checkpoint)
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit"})})
    assert again.checkpoints("src") == {"1:2": checkpoint}
    assert [e.body for e in again.pending("a", 10)] == [b'{"n":1}', b'{"n":2}']
    assert again.backlog("a") == 2


def test_each_webhook_has_its_own_cursor_and_filter(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"hits": frozenset({"hit"}), "all": frozenset({"hit", "scope"})})
    spool.append("src", [("hit", b"1"), ("scope", b"2"), ("hit", b"3")])
    batch = form_batch(spool, "hits", hook("hits", "hit"))
    assert batch is not None and batch.body == b"[1,3]"
    spool.record_batch("hits", batch)
    spool.finish_batch("hits", batch)
    assert spool.backlog("hits") == 0
    assert [e.body for e in spool.pending("all", 10)] == [b"1", b"2", b"3"]
    everything = form_batch(spool, "all", hook("all", "hit", "scope"))
    assert everything is not None
    spool.finish_batch("all", everything)
    assert spool.bytes == 0  # every webhook passed every event: the spool is empty


def test_a_recorded_batch_is_the_same_bytes_and_id_after_a_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", [("hit", b"1"), ("hit", b"2"), ("hit", b"3")])
    batch = form_batch(spool, "a", hook("a", "hit", max_events=2))
    assert batch is not None
    spool.record_batch("a", batch)
    spool.count_attempt("a")
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit"})})
    kept = again.open_batch("a")
    assert kept is not None
    assert (kept.webhook_id, kept.body, kept.attempts) == (batch.webhook_id, b"[1,2]", 1)


def test_sequence_numbers_are_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", [("hit", b"1")])
    first = form_batch(spool, "a", hook("a", "hit"))
    assert first is not None
    spool.finish_batch("a", first)
    spool.append("src", [("hit", b"2")])
    assert [e.body for e in spool.pending("a", 10)] == [b"2"]


def test_a_new_webhook_starts_after_what_is_already_kept(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", [("hit", b"old")])
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    spool.append("src", [("hit", b"new")])
    assert [e.body for e in spool.pending("b", 10)] == [b"new"]
    assert [e.body for e in spool.pending("a", 10)] == [b"old", b"new"]


def test_batches_respect_max_bytes_but_always_carry_one_event(tmp_path: Path) -> None:
    from agent.config import BatchConfig

    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", [("hit", b"x" * 40), ("hit", b"y" * 40), ("hit", b"z" * 200)])
    config = WebhookConfig(
        "a", "http://127.0.0.1:9/", frozenset({"hit"}), batch=BatchConfig(max_bytes=100)
    )
    first = form_batch(spool, "a", config)
    assert first is not None and first.body == b"[" + b"x" * 40 + b"," + b"y" * 40 + b"]"
    spool.finish_batch("a", first)
    second = form_batch(spool, "a", config)
    assert second is not None and second.count == 1 and len(second.body) == 202
