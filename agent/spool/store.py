"""The spool: tailhook's one owner of durable state (SQLite, in ``state_dir/spool.db``).

What it keeps, all in one database so that one transaction can cover them together:

- ``segments``: accepted notifications, in segments of one source read each (often
  thousands of events): the serialised objects joined by newlines, one letter per event
  for its type, and where each event starts. Segment numbers only grow (AUTOINCREMENT).
  Storing segments rather than rows per event keeps durability to well under a
  microsecond per event;
- ``checkpoints``: per source and file identity, the offset up to which lines were read,
  written in the same transaction as the segment read up to it (``ingest``);
- ``cursors``: per webhook, the position (segment, index) of the next event it has not
  delivered or dead-lettered (``cursors``);
- ``batches``: per webhook, the batch in flight: its ``webhook-id``, the range of
  positions it covers, the event types it took and its ``Form`` (payload, body, and
  the identity a ``wallarm`` payload carries), recorded before its first attempt. Its
  body is rebuilt from that range in that form byte for byte (the same function formed
  it), so every retry, after a restart or a reload too, sends the same bytes under the
  same id.

Filters (``routes``) are applied when a read is kept (``append``): an event no webhook
takes, by type or by filter, is not kept at all; an event some filtered webhook
excludes is marked in that webhook's view of the segment, so it is never in its backlog
nor sent, and counted in ``tailhook_webhook_events_filtered_total``. Filters and forms
changed by a reload apply to what is kept, and batches formed, after it.

``Spool`` is the thin, thread-safe front: each call takes the lock, runs one
transaction (``database``), and only once it has committed changes the ``Ledger``, the
same state in memory (cursors, backlogs, bytes held). ``capacity`` keeps the files within
``spool.max_bytes``; ``layouts`` migrates older spools; ``gauges`` sets the metrics.

The database runs in WAL mode with ``synchronous=NORMAL``: a killed process loses
nothing that was committed; a power cut may roll back the newest commits, but offsets
roll back with the events they cover, so lines are read again rather than lost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

from agent.errors import StateError
from agent.spool import cursors, ingest
from agent.spool.capacity import Budget, has_room
from agent.spool.cursors import Change, Ledger, Segments
from agent.spool.database import Database
from agent.spool.gauges import update_gauges
from agent.spool.routes import Form, Route, Routing
from agent.spool.segments import (
    TYPE_CODES,
    Batch,
    Checkpoint,
    NewSegment,
    new_webhook_id,
)
from agent.telemetry import Metrics, fields
from agent.worker import heartbeat

__all__ = ["Batch", "Checkpoint", "NewSegment", "Spool", "new_webhook_id"]

log = logging.getLogger(__name__)

#: How often a source waiting for room looks again (a delivery also wakes it).
FULL_WAIT = 0.5


class Spool:
    """Durable queue of events between sources and webhooks. Thread-safe."""

    def __init__(
        self,
        path: Path,
        metrics: Metrics,
        max_bytes: int = 1 << 30,
        when_full: str = "block",
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._metrics = metrics
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._db = Database(path, max_bytes)
        self.recovered = self._db.recovered
        self._ledger = Ledger()
        self._routing = Routing({}, (), "", {})  # replaced whole by configure_webhooks
        self._segments = Segments()
        try:
            held, newest = self._db.read(
                lambda db: (cursors.held_bytes(db), cursors.newest_seq(db))
            )
        except StateError:
            self._db.close()
            raise
        self._ledger.held_bytes, self._ledger.newest_seq = held, newest
        self._metrics.spool_bytes.set(held)

    @property
    def writable(self) -> bool:
        """New events are taken: False after a failed read or write, until ``probe``
        finds the spool sound again (``/readyz`` answers 503 meanwhile)."""
        return self._db.accepting

    @property
    def problem(self) -> str:
        """Why new events are refused ("" while they are taken)."""
        return self._db.problem

    @property
    def filtering(self) -> bool:
        """Whether some enabled webhook has a filter (the pipeline takes events' facts)."""
        return bool(self._routing.filters)

    @property
    def budget(self) -> Budget:
        return self._db.budget

    # -- webhooks ---------------------------------------------------------------------

    def configure_webhooks(
        self, subscriptions: Mapping[str, frozenset[str] | Route]
    ) -> dict[str, int]:
        """Set the enabled webhooks: the event types each takes, or its whole ``Route``
        (types, filter, form).

        A webhook seen for the first time starts after the newest event kept; a webhook
        no longer enabled loses its cursor and batch, and with them its claim on events.
        A webhook whose types, filter or form changed keeps its cursor and batch (the
        batch keeps its form). Returns, for each webhook that lost its cursor, how many
        events it had not delivered.
        """
        routing = Routing.of(subscriptions, TYPE_CODES)
        codes = routing.codes

        def configure(db: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int], Change]:
            positions, change = cursors.configure(db, self._ledger, codes)
            backlog = {
                name: cursors.count_pending(db, name, codes[name], positions[name])
                for name in codes
            }
            return positions, backlog, change

        with self._changed:
            self._check_open()
            positions, backlog, change = self._db.write(configure)
            lost = {
                name: pending for name, pending in self._ledger.backlog.items() if name not in codes
            }
            self._ledger.codes, self._ledger.cursors = codes, positions
            self._ledger.backlog = backlog
            self._routing = routing
            self._apply(Change(held_bytes=change.held_bytes, deleted=change.deleted))
            self._changed.notify_all()
        return lost

    # -- sources ----------------------------------------------------------------------

    def append(
        self,
        source: str,
        segment: NewSegment | None,
        checkpoint: Checkpoint | None = None,
        stop: threading.Event | None = None,
        target: str | None = None,
    ) -> bool:
        """Keep ``segment`` and move ``source``'s checkpoint, in one transaction. Events
        of a type no enabled webhook takes are not kept; with ``target``, the segment is
        for that webhook alone (a dead-letter replay).

        Blocks while the spool is full and ``when_full`` is ``block``; returns False
        (keeping nothing) if ``stop`` is set while waiting. Raises StateError, keeping
        nothing, while the spool takes no new events (a full disk); a checkpoint alone
        (no events to keep) is still written then.
        """
        routing = self._routing
        incoming = ingest.Incoming.routed(source, segment, checkpoint, target, routing)
        drop = self.when_full == "drop_oldest"
        waiting = False
        with self._changed:
            while True:
                self._check_open()
                if self._routing is not routing:  # a reload since: its routes apply
                    routing = self._routing
                    incoming = ingest.Incoming.routed(source, segment, checkpoint, target, routing)
                types = incoming.types
                if types and not drop and not self._room_for(incoming):
                    kept = False
                else:
                    keep = partial(ingest.keep, ledger=self._ledger, budget=self.budget)
                    kept, change = self._db.write(
                        partial(keep, drop=drop, incoming=incoming), new_events=bool(types)
                    )
                    self._apply(change)
                if kept:
                    self._count_filtered(incoming)
                    if types:
                        self._changed.notify_all()
                    return True
                if not waiting:
                    waiting = True
                    log.warning(
                        "The spool is full; sources wait until webhooks deliver",
                        extra=fields(spool_bytes=self._ledger.held_bytes, max_bytes=self.max_bytes),
                    )
                if stop is not None and stop.is_set():
                    return False
                heartbeat()  # the source waits for room: it is not stuck
                self._changed.wait(FULL_WAIT)
                if self._closed:
                    return False

    def _count_filtered(self, incoming: ingest.Incoming) -> None:
        for (webhook, event_type), n in incoming.excluded.items():
            self._metrics.filtered.labels(webhook=webhook, event_type=event_type).inc(n)

    def replay(self, webhook: str, segments: Sequence[NewSegment]) -> int:
        """Keep ``segments`` for ``webhook`` alone (a dead-letter replay), in one
        transaction, touching no other webhook's cursor or segments. A webhook with no
        cursor yet gets one at the first of them, so its next start does not skip them.

        A replay neither waits for room nor drops other events: past ``max_bytes`` it is
        refused (StateError) and nothing is kept. Returns the number of events kept.
        """
        return self._keep_targeted("dead-letter-replay", [(webhook, s) for s in segments], True)

    def announce(self, segment: NewSegment, webhooks: Iterable[str]) -> int:
        """Keep ``segment`` (the agent's own notifications: ``integration_broken`` and
        the like) for each of ``webhooks`` alone, in one transaction, so it survives a
        crash like any event. Refused (StateError) rather than waiting for room."""
        return self._keep_targeted("announcement", [(name, segment) for name in webhooks], False)

    def _keep_targeted(
        self, source: str, items: Sequence[tuple[str, NewSegment]], add_cursor: bool
    ) -> int:
        every_type = "".join(TYPE_CODES.values())
        now = time.time()
        incoming = [
            ingest.Incoming.of(source, kept, None, webhook, now)
            for webhook, segment in items
            for kept in [segment.keeping(every_type)]
            if kept.types
        ]
        keep_all = partial(
            ingest.keep_targeted,
            ledger=self._ledger,
            budget=self.budget,
            incoming=incoming,
            add_cursor=add_cursor,
        )

        with self._changed:
            self._check_open()
            try:
                change = self._db.write(keep_all, new_events=bool(incoming))
            except ingest.NoRoom:
                raise StateError(
                    f"the spool has no room for {len(incoming)} segments ({source});"
                    " nothing of them was kept"
                ) from None
            self._apply(change)
            self._changed.notify_all()
        return sum(len(one.types) for one in incoming)

    def checkpoints(self, source: str) -> dict[str, Checkpoint]:
        """The checkpoints of one source, by file identity."""
        with self._lock:
            self._check_open()
            return self._db.read(lambda db: ingest.read_checkpoints(db, source))

    def forget_checkpoints(self, source: str, keys: Iterable[str]) -> None:
        """Drop the checkpoints of files that are gone for good."""
        keys = list(keys)
        with self._lock:
            self._check_open()
            self._db.write(lambda db: ingest.forget_checkpoints(db, source, keys))

    # -- sinks ------------------------------------------------------------------------

    def wait_pending(self, webhook: str, timeout: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout`` s for ``webhook`` to have at least one pending event,
        or for ``stop`` (see ``wake``)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._closed or stop.is_set() or self._ledger.backlog.get(webhook, 0) > 0,
                timeout,
            )

    def wake(self) -> None:
        """Wake every waiter, so one that is stopping notices at once."""
        with self._changed:
            self._changed.notify_all()

    def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for new events (or a close)."""
        with self._changed:
            self._changed.wait(timeout)

    def next_batch(self, webhook: str, max_events: int, max_bytes: int) -> Batch | None:
        """Form and record the next batch: the oldest pending events the webhook takes,
        in its form, the body within the limits (one event always fits)."""
        with self._lock:
            codes = self._ledger.codes.get(webhook)
            if not codes or self._closed:
                return None
            start = self._ledger.cursors[webhook]
            form = self._routing.forms.get(webhook, Form())
            body, events, end, counts = self._db.read(
                lambda db: self._segments.gather(
                    db, webhook, start, None, codes, max_events, max_bytes, form
                )
            )
            if not counts:
                if end != start:  # only events of other types: step over them
                    self._apply(
                        self._db.write(
                            lambda db: cursors.move_cursor(db, self._ledger, webhook, end)
                        )
                    )
                return None
            batch = Batch(
                new_webhook_id(), start, end, codes, body, counts, time.time(), 0, form, events
            )
            self._db.write(lambda db: cursors.record_batch(db, webhook, batch))
            return batch

    def open_batch(self, webhook: str) -> Batch | None:
        """The batch ``webhook`` has in flight, from this run or an earlier one."""
        with self._lock:
            self._check_open()
            return self._db.read(lambda db: self._segments.read_batch(db, webhook))

    def count_attempt(self, webhook: str) -> None:
        with self._lock:
            self._check_open()
            self._db.write(
                lambda db: db.execute(
                    "UPDATE batches SET attempts = attempts + 1 WHERE webhook = ?", (webhook,)
                )
            )

    def finish_batch(self, webhook: str, batch: Batch) -> None:
        """The batch was delivered or dead-lettered: in one transaction, drop it, move
        the cursor past it and delete what every webhook has passed. Finishing a batch
        already finished changes nothing."""
        with self._changed:
            self._check_open()
            change = self._db.write(
                lambda db: cursors.finish_batch(db, self._ledger, webhook, batch)
            )
            self._apply(change)
            self._changed.notify_all()

    # -- health and observing -----------------------------------------------------------

    def probe(self) -> None:
        """While new events are refused, see whether the spool can take them again (the
        agent's gauge thread calls this every second)."""
        with self._changed:
            if self._closed:
                return
            was = self._db.accepting
            self._db.probe()
            if self._db.accepting and not was:
                self._changed.notify_all()

    def backlog(self, webhook: str) -> int:
        with self._lock:
            return self._ledger.backlog.get(webhook, 0)

    def update_gauges(self) -> None:
        """Refresh the spool and per-webhook backlog gauges."""
        with self._lock:
            if not self._closed:
                update_gauges(self._metrics, self._db, self._ledger, time.time())

    @property
    def held_bytes(self) -> int:
        return self._ledger.held_bytes

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._db.close()

    # -- internals (the lock is held) -------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("the spool is closed")

    def _room_for(self, incoming: ingest.Incoming) -> bool:
        if not self._ledger.held_bytes:
            return True
        need = self.budget.room_needed(incoming.record_bytes)
        return self._db.read(lambda db: has_room(db, self.budget, need))

    def _apply(self, change: Change) -> None:
        """Bring the ledger up to a change that has committed."""
        self._ledger.apply(change)
        self._segments.forget(change.deleted)
        self._metrics.spool_bytes.set(self._ledger.held_bytes)
        if change.dropped:
            self._metrics.spool_dropped.inc(change.dropped)
            log.error(
                "The spool is full; dropped the oldest undelivered events",
                extra=fields(dropped=change.dropped, max_bytes=self.max_bytes),
            )
