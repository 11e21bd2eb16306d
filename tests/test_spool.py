"""The spool: events and checkpoints together, per-webhook cursors, stable batches."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.spool import Checkpoint, NewSegment, Spool
from agent.telemetry import Metrics


def open_spool(path: Path, max_bytes: int = 1 << 30, when_full: str = "block") -> Spool:
    return Spool(path / "spool.db", Metrics(CollectorRegistry()), max_bytes, when_full)


def drain(spool: Spool, webhook: str, max_events: int = 500) -> list[bytes]:
    """Deliver everything pending for ``webhook``; the bodies of its batches."""
    bodies = []
    while (batch := spool.next_batch(webhook, max_events, 1 << 20)) is not None:
        bodies.append(batch.body)
        spool.finish_batch(webhook, batch)
    return bodies


def test_checkpoint_and_events_survive_a_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    checkpoint = Checkpoint("1:2", "/x.log", 120, b"{")
    spool.append("src", NewSegment.of([("hit", b'{"n":1}'), ("hit", b'{"n":2}')]), checkpoint)
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit"})})
    assert again.checkpoints("src") == {"1:2": checkpoint}
    assert again.backlog("a") == 2
    assert drain(again, "a") == [b'[{"n":1},{"n":2}]']


def test_each_webhook_has_its_own_cursor_and_filter(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"hits": frozenset({"hit"}), "all": frozenset({"hit", "scope"})})
    spool.append("src", NewSegment.of([("hit", b"1"), ("scope", b"2"), ("hit", b"3")]))
    spool.append("src", NewSegment.of([("scope", b"4")]))
    assert drain(spool, "hits") == [b"[1,3]"]
    assert spool.backlog("hits") == 0
    assert spool.held_bytes > 0  # "all" still needs them
    assert drain(spool, "all", max_events=2) == [b"[1,2]", b"[3,4]"]
    assert spool.held_bytes == 0  # every webhook passed every event: the spool is empty


def test_events_of_types_nobody_takes_are_not_kept(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("scope", b"1"), ("system", b"2")]))
    assert spool.held_bytes == 0


def test_a_webhook_steps_over_the_types_it_does_not_take(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"hits": frozenset({"hit"}), "scopes": frozenset({"scope"})})
    spool.append("src", NewSegment.of([("scope", b"1")]))
    assert drain(spool, "scopes") == [b"[1]"]
    assert spool.held_bytes > 0
    assert spool.next_batch("hits", 10, 1000) is None  # nothing for it, but it moves on
    assert spool.held_bytes == 0


def test_a_recorded_batch_is_the_same_bytes_and_id_after_a_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"1"), ("hit", b"2"), ("hit", b"3")]))
    batch = spool.next_batch("a", 2, 1000)
    assert batch is not None
    spool.count_attempt("a")
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit"})})
    kept = again.open_batch("a")
    assert kept is not None
    assert (kept.webhook_id, kept.body, kept.attempts) == (batch.webhook_id, b"[1,2]", 1)
    again.finish_batch("a", kept)
    assert drain(again, "a") == [b"[3]"]


def test_positions_are_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"1")]))
    assert drain(spool, "a") == [b"[1]"]
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit"})})
    again.append("src", NewSegment.of([("hit", b"2")]))
    assert drain(again, "a") == [b"[2]"]


def test_a_new_webhook_starts_after_what_is_already_kept(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"old")]))
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"new")]))
    assert drain(spool, "b") == [b"[new]"]
    assert drain(spool, "a") == [b"[old,new]"]


def test_batches_respect_max_bytes_but_always_carry_one_event(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append(
        "src", NewSegment.of([("hit", b"x" * 40), ("hit", b"y" * 40), ("hit", b"z" * 200)])
    )
    first = spool.next_batch("a", 500, 100)
    assert first is not None and first.body == b"[" + b"x" * 40 + b"," + b"y" * 40 + b"]"
    spool.finish_batch("a", first)
    second = spool.next_batch("a", 500, 100)
    assert second is not None and second.count == 1 and len(second.body) == 202


def test_drop_oldest_discards_and_counts_undelivered_events(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", Metrics(registry), max_bytes=250, when_full="drop_oldest")
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"a" * 100)]))
    spool.append("src", NewSegment.of([("hit", b"b" * 100)]))
    spool.append("src", NewSegment.of([("hit", b"c" * 100)]))  # no room: the oldest goes
    assert registry.get_sample_value("tailhook_spool_dropped_events_total") == 1
    assert spool.backlog("a") == 2
    assert drain(spool, "a") == [b"[" + b"b" * 100 + b"," + b"c" * 100 + b"]"]


def test_a_rebuilt_batch_is_byte_identical_across_segments_and_types(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit", "system"}), "b": frozenset({"scope"})})
    spool.append("src", NewSegment.of([("hit", b"1"), ("scope", b"2"), ("system", b"3")]))
    spool.append("src", NewSegment.of([("hit", b"4"), ("hit", b"5"), ("scope", b"6")]))
    formed = spool.next_batch("a", 4, 1 << 20)
    assert formed is not None and formed.body == b"[1,3,4,5]"
    spool.close()
    again = open_spool(tmp_path)
    again.configure_webhooks({"a": frozenset({"hit", "system"}), "b": frozenset({"scope"})})
    rebuilt = again.open_batch("a")
    assert rebuilt is not None
    assert (rebuilt.webhook_id, rebuilt.body) == (formed.webhook_id, formed.body)
    assert rebuilt.type_counts == {"hit": 3, "system": 1}


def test_a_batch_in_flight_keeps_its_body_when_drop_oldest_deletes_its_events(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, max_bytes=250, when_full="drop_oldest")
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"a" * 100)]))
    in_flight = spool.next_batch("a", 10, 1 << 20)
    assert in_flight is not None
    spool.append("src", NewSegment.of([("hit", b"b" * 100)]))
    spool.append("src", NewSegment.of([("hit", b"c" * 100)]))  # drops the first segment
    kept = spool.open_batch("a")
    assert kept is not None and kept.body == in_flight.body == b"[" + b"a" * 100 + b"]"
    spool.finish_batch("a", kept)
    assert drain(spool, "a") == [b"[" + b"b" * 100 + b"," + b"c" * 100 + b"]"]


def test_a_replayed_segment_goes_to_its_webhook_alone(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"1")]))
    spool.append("replay", NewSegment.of([("hit", b"old")]), target="b")
    spool.append("src", NewSegment.of([("hit", b"2")]))
    assert (spool.backlog("a"), spool.backlog("b")) == (2, 3)
    assert drain(spool, "a") == [b"[1,2]"]
    assert drain(spool, "b") == [b"[1,old,2]"]
    assert spool.held_bytes == 0


def test_refresh_notices_segments_another_process_added(tmp_path: Path) -> None:
    running = open_spool(tmp_path)
    running.configure_webhooks({"a": frozenset({"hit"})})
    other = open_spool(tmp_path)
    other.configure_webhooks({"a": frozenset({"hit"})})
    other.append("replay", NewSegment.of([("hit", b"again")]), target="a")
    other.close()
    assert running.backlog("a") == 0
    running.refresh()
    assert running.backlog("a") == 1
    assert drain(running, "a") == [b"[again]"]


def test_a_spool_of_another_layout_is_set_aside(tmp_path: Path) -> None:
    import sqlite3

    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.close()
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    again = open_spool(tmp_path)
    assert again.recovered
    assert len(list(tmp_path.glob("spool.db.damaged-*"))) == 1


def test_a_segment_filtered_on_the_way_in_has_no_stray_separator(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"scopes": frozenset({"scope"})})
    spool.append("src", NewSegment.of([("hit", b"1"), ("scope", b"2"), ("scope", b"3")]))
    assert drain(spool, "scopes") == [b"[2,3]"]


def test_the_spool_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        spool = open_spool(tmp_path)
        spool.configure_webhooks({"a": frozenset({"hit"})})
        spool.append("src", NewSegment.of([("hit", b"1")]))
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        spool.close()
    finally:
        os.umask(old)


def test_a_batch_full_at_a_segment_boundary_carries_nothing_of_the_next(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    events = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 40) for n in range(3)]
    for event in events:
        spool.append("src", NewSegment.of([("hit", event)]))
    batch = spool.next_batch("a", 500, 120)  # room for two events, not three
    assert batch is not None
    assert (batch.body, batch.count) == (b"[" + b",".join(events[:2]) + b"]", 2)
    spool.finish_batch("a", batch)
    assert drain(spool, "a") == [b"[" + events[2] + b"]"]
