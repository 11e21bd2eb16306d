"""Gauges: the bytes of events held, the files' size against ``max_bytes``, and per
webhook the backlog and the age of its oldest undelivered event."""

from __future__ import annotations

from functools import partial

from agent.spool.capacity import bytes_on_disk
from agent.spool.cursors import Ledger, oldest_pending
from agent.spool.database import Database
from agent.telemetry import Metrics


def update_gauges(metrics: Metrics, db: Database, ledger: Ledger, now: float) -> None:
    """Set the spool's gauges (the spool's lock is held)."""
    metrics.spool_bytes.set(ledger.held_bytes)
    metrics.spool_capacity_ratio.set(bytes_on_disk(db.path) / db.budget.max_bytes)
    for name in ledger.codes:
        metrics.backlog.labels(webhook=name).set(ledger.backlog[name])
        oldest = None
        if ledger.backlog[name]:
            cursor = ledger.cursors[name]
            oldest = db.read(partial(oldest_pending, cursor=cursor))
        age = 0.0 if oldest is None else max(0.0, now - oldest)
        metrics.oldest_age.labels(webhook=name).set(age)
