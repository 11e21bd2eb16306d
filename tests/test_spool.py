"""The spool: events and checkpoints together, per-webhook cursors, stable batches."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.errors import StateError
from agent.spool import Checkpoint, NewSegment, Spool
from agent.telemetry import Metrics


def open_spool(path: Path, max_bytes: int = 1 << 30, when_full: str = "block") -> Spool:
    return Spool(path / "spool.db", Metrics(CollectorRegistry()), max_bytes, when_full)


#: spool.max_bytes's smallest value: room for about 450 KiB of events.
SMALL = 2 * 1024 * 1024


def big(n: int) -> bytes:
    """An event of 45 kB (about what a read of a SMALL spool's sources keeps)."""
    return str(n).encode().ljust(45_000, b".")


def drain(
    spool: Spool, webhook: str, max_events: int = 500, max_bytes: int = 1 << 20
) -> list[bytes]:
    """Deliver everything pending for ``webhook``; the bodies of its batches."""
    bodies = []
    while (batch := spool.next_batch(webhook, max_events, max_bytes)) is not None:
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


def fill_until_a_drop(spool: Spool, registry: CollectorRegistry, first: int = 0) -> int:
    """Append one ``big`` event at a time until drop_oldest drops; how many were
    appended (the last one included)."""
    for n in range(first, 100):
        spool.append("src", NewSegment.of([("hit", big(n))]))
        if registry.get_sample_value("tailhook_spool_dropped_events_total"):
            return n + 1
    raise AssertionError("nothing was ever dropped")


def test_drop_oldest_discards_and_counts_undelivered_events(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", Metrics(registry), SMALL, when_full="drop_oldest")
    spool.configure_webhooks({"a": frozenset({"hit"})})
    appended = fill_until_a_drop(spool, registry)
    assert appended > 3
    assert registry.get_sample_value("tailhook_spool_dropped_events_total") == 1
    assert spool.backlog("a") == appended - 1
    assert drain(spool, "a", max_bytes=1) == [b"[" + big(n) + b"]" for n in range(1, appended)]


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


def test_a_batch_in_flight_is_still_delivered_when_drop_oldest_passes_its_events(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", Metrics(registry), SMALL, when_full="drop_oldest")
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", big(0))]))
    in_flight = spool.next_batch("a", 10, 1 << 20)
    assert in_flight is not None
    appended = fill_until_a_drop(spool, registry, first=1)
    # The segment under the batch stays (it is still to be sent), so the next one went.
    assert registry.get_sample_value("tailhook_spool_dropped_events_total") == 1
    kept = spool.open_batch("a")
    assert kept is not None and kept.body == in_flight.body == b"[" + big(0) + b"]"
    assert spool.backlog("a") == appended - 1
    spool.finish_batch("a", kept)
    assert spool.backlog("a") == appended - 2
    assert drain(spool, "a", max_bytes=1) == [b"[" + big(n) + b"]" for n in range(2, appended)]
    assert spool.held_bytes == 0


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


def test_a_spool_of_a_later_layout_is_set_aside(tmp_path: Path) -> None:
    import sqlite3

    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.close()
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
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


def test_drop_oldest_counts_exactly_what_each_webhook_loses(tmp_path: Path) -> None:
    """Events of a batch in flight are still delivered: not dropped, and the backlog
    (which counts them until that batch is finished) stays exact."""
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", Metrics(registry), SMALL, when_full="drop_oldest")
    spool.configure_webhooks({"a": frozenset({"hit"}), "b": frozenset({"hit", "scope"})})
    first = [("hit", big(0)[:15_000]), ("scope", b"s"), ("hit", b"h1"), ("hit", b"h2")]
    spool.append("src", NewSegment.of(first))
    in_flight = spool.next_batch("a", 2, 1 << 20)  # a: hit 0 and h1; b: nothing yet
    assert in_flight is not None and in_flight.count == 2
    appended = fill_until_a_drop(spool, registry, first=1)
    # The first segment stays under a's batch; the segment after it went. a loses h2
    # and event 1; b loses all four of the first segment and event 1: five events.
    assert registry.get_sample_value("tailhook_spool_dropped_events_total") == 5
    later = appended - 2  # the big events after the one that went
    assert (spool.backlog("a"), spool.backlog("b")) == (2 + later, later)
    spool.finish_batch("a", in_flight)
    spool.finish_batch("a", in_flight)  # finishing twice counts it once
    assert (spool.backlog("a"), spool.backlog("b")) == (later, later)
    assert len(drain(spool, "a", max_bytes=1)) == later
    assert len(drain(spool, "b", max_bytes=1)) == later
    assert (spool.backlog("a"), spool.backlog("b"), spool.held_bytes) == (0, 0, 0)


def test_a_failing_finish_changes_nothing_and_the_spool_recovers(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"1")]))
    spool.append("src", NewSegment.of([("hit", b"2")]))
    batch = spool.next_batch("a", 1, 1 << 20)
    assert batch is not None and batch.body == b"[1]"
    other = sqlite3.connect(tmp_path / "spool.db")
    # A real SQLite failure in the middle of the transaction: after the batch is
    # deleted and the cursor moved, deleting the segment all webhooks passed fails.
    other.execute(
        "CREATE TRIGGER fail BEFORE DELETE ON segments BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    other.commit()
    with pytest.raises(StateError):
        spool.finish_batch("a", batch)
    assert not spool.writable  # /readyz says 503
    assert (spool.backlog("a"), spool.held_bytes) == (2, 2)
    again = spool.open_batch("a")
    assert again is not None and (again.webhook_id, again.body) == (batch.webhook_id, b"[1]")
    other.execute("DROP TRIGGER fail")
    other.commit()
    other.close()
    spool.probe()
    assert spool.writable
    spool.finish_batch("a", batch)
    assert (spool.backlog("a"), spool.held_bytes) == (1, 1)
    assert drain(spool, "a") == [b"[2]"]


def test_a_failing_read_is_a_state_error_and_the_spool_recovers(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.configure_webhooks({"a": frozenset({"hit"})})
    spool.append("src", NewSegment.of([("hit", b"1")]))
    other = sqlite3.connect(tmp_path / "spool.db")
    other.execute("ALTER TABLE batches RENAME TO hidden")
    other.commit()
    with pytest.raises(StateError):
        spool.open_batch("a")
    assert not spool.writable
    with pytest.raises(StateError):  # no new events while the spool is not sound
        spool.append("src", NewSegment.of([("hit", b"2")]))
    spool.probe()
    assert not spool.writable  # still failing
    other.execute("ALTER TABLE hidden RENAME TO batches")
    other.commit()
    other.close()
    spool.probe()
    assert spool.writable
    spool.append("src", NewSegment.of([("hit", b"2")]))
    assert drain(spool, "a") == [b"[1,2]"]


def test_the_reserve_is_owner_only_and_never_followed_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "spool.reserve").symlink_to(elsewhere)
    spool = open_spool(tmp_path / "state")
    assert not elsewhere.exists()
    assert not spool.writable  # no headroom: new events wait
    spool.close()
    (tmp_path / "state" / "spool.reserve").unlink()
    spool = open_spool(tmp_path / "state")
    assert spool.writable
    reserve = tmp_path / "state" / "spool.reserve"
    assert stat.S_IMODE(reserve.stat().st_mode) == 0o600
    assert reserve.stat().st_size == spool.budget.reserve_bytes
    spool.close()
