"""What a webhook's ``payload``, ``body`` and ``filter`` cost, per event, in process.

1. Delivering (form, record, finish, delete) N stored hits to one webhook in each form:
   ``classic``/``json_array`` (today's path), ``classic``/``ndjson``, ``wallarm`` with
   either body. The difference to the first is what the form costs.
2. Keeping N hits (one segment per read, as the file source does) with 0, 1 and 4
   filtered webhooks beside an unfiltered one; half the hits pass each filter.
3. The pipeline's part of filtering: taking an event's facts from its notification.

CPU seconds (``time.process_time``), the best of ``--rounds``. Run:
``python benchmarks/payloads.py [--events N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from agent.formats import MappingContext, load_format
from agent.formats.wallarm import Identity
from agent.spool import NewSegment, Spool
from agent.spool.routes import EventFilter, Form, Route, facts_of
from agent.telemetry import Metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agent_support import hit_line

PER_READ = 4000  # events of one segment (a 1 MiB read of ~260-byte hits)
HITS = frozenset({"hit"})
WHO = Identity("node-7.example.com", "EU")


def notifications(count: int) -> list[dict[str, object]]:
    """Mapped hits; every other one blocked on a shop domain."""
    fmt, ctx = load_format("native"), MappingContext()
    found = []
    for n in range(count):
        line = orjson.loads(hit_line(n))
        if n % 2:
            line.update(block_status="blocked", domain=f"s{n % 7}.shop.example.com")
        found.append(fmt.convert(line, ctx)[1])
    return found


def segments(events: list[dict[str, object]]) -> list[NewSegment]:
    out = []
    for start in range(0, len(events), PER_READ):
        segment = NewSegment()
        for notification in events[start : start + PER_READ]:
            segment.add("hit", orjson.dumps(notification), facts_of("hit", notification))
        out.append(segment)
    return out


def best(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def deliver(directory: Path, reads: list[NewSegment], form: Form) -> float:
    """CPU seconds per event to form, record and finish every batch in ``form``."""
    spool = Spool(directory / f"deliver-{time.monotonic_ns()}.db", Metrics(CollectorRegistry()))
    spool.configure_webhooks({"bench": Route(HITS, None, form)})
    for segment in reads:
        spool.append("bench", segment)
    count = spool.backlog("bench")
    started = time.process_time()
    while (batch := spool.next_batch("bench", 500, 1 << 20)) is not None:
        spool.finish_batch("bench", batch)
    spent = time.process_time() - started
    spool.close()
    return spent / count


def keep(directory: Path, reads: list[NewSegment], filtered: int) -> float:
    """CPU seconds per event to keep every read with ``filtered`` filtered webhooks."""
    spool = Spool(directory / f"keep-{time.monotonic_ns()}.db", Metrics(CollectorRegistry()))
    routes: dict[str, frozenset[str] | Route] = {"all": HITS}
    for n in range(filtered):
        shop = EventFilter(["blocked"], ["sqli", "xss"], ["*.shop.example.com", f"x{n}.test"])
        routes[f"filtered-{n}"] = Route(HITS, shop)
    spool.configure_webhooks(routes)
    count = sum(len(segment) for segment in reads)
    started = time.process_time()
    for segment in reads:
        spool.append("bench", segment)
    spent = time.process_time() - started
    spool.close()
    return spent / count


def floor(count: int) -> float:
    """For scale: CPU seconds per event of parsing, validating, mapping and serialising a
    hit line (the pipeline's floor, as ``throughput.py`` measures it)."""
    fmt, ctx = load_format("native"), MappingContext()
    lines = [hit_line(n) for n in range(count)]
    started = time.process_time()
    for line in lines:
        orjson.dumps(fmt.convert(orjson.loads(line), ctx)[1])
    return (time.process_time() - started) / count


def facts(events: list[dict[str, object]]) -> float:
    started = time.process_time()
    for notification in events:
        facts_of("hit", notification)
    return (time.process_time() - started) / len(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = notifications(args.events)
    reads = segments(events)
    us = 1e6
    with tempfile.TemporaryDirectory(prefix="tailhook-payloads-") as name:
        tmp = Path(name)
        forms = {
            "classic json_array": Form(),
            "classic ndjson": Form("classic", "ndjson"),
            "wallarm json_array": Form("wallarm", "json_array", WHO),
            "wallarm ndjson": Form("wallarm", "ndjson", WHO),
        }
        base = 0.0
        print(f"delivering {args.events} hits, CPU µs per event (best of {args.rounds}):")
        for label, form in forms.items():
            cost = best(args.rounds, lambda form=form: deliver(tmp, reads, form))  # type: ignore[misc]
            base = base or cost
            print(f"  {label:<20} {cost * us:6.2f}   (+{(cost - base) * us:.2f})")
        print("keeping them, CPU µs per event:")
        plain = 0.0
        for filtered in (0, 1, 4):
            cost = best(args.rounds, lambda n=filtered: keep(tmp, reads, n))  # type: ignore[misc]
            plain = plain or cost
            print(
                f"  {filtered} filtered webhooks   {cost * us:6.2f}   (+{(cost - plain) * us:.2f})"
            )
        print(f"taking an event's facts in the pipeline: {facts(events) * us:.3f} µs")
        scale = best(args.rounds, lambda: floor(10_000))
        print(f"for scale, the pipeline's floor: {scale * us:.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
