"""Webhook filters (CONTRACT §3, §5a): judged when an event is accepted, so an event a
webhook excludes is never in its backlog nor sent, an event no webhook wants is not kept
at all, and each exclusion is counted; check-config refuses values no event can have."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agent.config import parse_config
from agent.errors import ConfigError
from agent.formats.wallarm import Identity, envelope
from agent.spool import Checkpoint, NewSegment, Spool
from agent.spool.routes import EventFilter, Facts, Form, Route
from agent.telemetry import Metrics
from tests.test_spool import SMALL, big, drain, fill_until_a_drop

SOC = EventFilter(block_status=["blocked"], attack_types=["sqli"], domains=["*.shop.example.com"])
HIGH = EventFilter(threats=["High"])


def hit(status: str, attack: str, domain: str) -> Facts:
    return "hit", status, attack, domain, None


def vuln(threat: str, domain: str) -> Facts:
    return "vulnerability", None, None, domain, threat


#: (type, bytes, facts): hits, vulnerabilities, a system and a scope event.
EVENTS = [
    ("hit", b'"h1"', hit("blocked", "sqli", "a.shop.example.com")),
    ("hit", b'"h2"', hit("monitored", "sqli", "a.shop.example.com")),  # not blocked
    ("hit", b'"h3"', hit("blocked", "xss", "a.shop.example.com")),  # not sqli
    ("hit", b'"h4"', hit("blocked", "sqli", "shop.example.com")),  # "*." needs a label
    ("hit", b'"h5"', hit("blocked", "sqli", "B.Shop.Example.COM")),  # case is ignored
    ("vulnerability", b'"v1"', vuln("High", "www.shop.example.com")),
    ("vulnerability", b'"v2"', vuln("Low", "x.shop.example.com")),
    ("vulnerability", b'"v3"', vuln("High", "other.example.org")),  # not the domain
    ("system", b'"s1"', None),
    ("scope", b'"c1"', None),
]
ROUTES = {
    # only blocked SQL injections on *.shop.example.com (and vulnerabilities there)
    "soc": Route(frozenset({"hit", "vulnerability", "system", "scope"}), SOC),
    "vulns": Route(frozenset({"vulnerability"}), HIGH),
    "audit": frozenset({"system"}),  # no filter
}


def segment(events: list[tuple[str, bytes, Facts]]) -> NewSegment:
    kept = NewSegment()
    for kind, body, facts in events:
        kept.add(kind, body, facts)
    return kept


def open_spool(path: Path, registry: CollectorRegistry, **settings: object) -> Spool:
    return Spool(path / "spool.db", Metrics(registry), **settings)  # type: ignore[arg-type]


def filtered(registry: CollectorRegistry, webhook: str, event_type: str) -> float:
    labels = {"webhook": webhook, "event_type": event_type}
    return registry.get_sample_value("tailhook_webhook_events_filtered_total", labels) or 0.0


def stored_events(path: Path) -> str:
    db = sqlite3.connect(path / "spool.db")
    try:
        return "".join(types for (types,) in db.execute("SELECT types FROM segments ORDER BY seq"))
    finally:
        db.close()


def test_each_condition_holds_only_for_the_types_it_can_apply_to() -> None:
    assert [SOC.admits(facts) for _, _, facts in EVENTS] == [
        True, False, False, False, True,  # hits: status, type and domain all judged
        True, True, False,  # vulnerabilities: only the domain (no status, no type)
        True, True,  # system and scope pass every filter
    ]  # fmt: skip
    assert [HIGH.admits(facts) for _, _, facts in EVENTS] == [
        True, True, True, True, True,  # threats does not exclude a hit
        True, False, True,
        True, True,
    ]  # fmt: skip
    globs = EventFilter(domains=["shop.example.com", "api-?.example.net", "[ab].test"])
    assert [globs.admits(hit("passed", "rce", d)) for d in (
        "shop.example.com", "api-1.example.net", "api-12.example.net", "b.test", "c.test", "",
    )] == [True, True, False, True, False, False]  # fmt: skip


def test_excluded_events_are_never_a_webhooks_backlog_nor_sent(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry)
    spool.configure_webhooks(ROUTES)
    spool.append("src", segment(EVENTS))
    assert (spool.backlog("soc"), spool.backlog("vulns"), spool.backlog("audit")) == (6, 2, 1)
    # h2, h3 and h4: soc excluded them and nobody else takes hits: not kept at all.
    assert stored_events(tmp_path) == "hhvvvsc"
    assert [
        filtered(registry, "soc", "hit"),
        filtered(registry, "soc", "vulnerability"),
        filtered(registry, "soc", "system"),
        filtered(registry, "vulns", "vulnerability"),
        filtered(registry, "audit", "system"),
    ] == [3, 1, 0, 1, 0]
    spool.close()
    again = open_spool(tmp_path, CollectorRegistry())  # backlogs counted again from disk
    again.configure_webhooks(ROUTES)
    assert (again.backlog("soc"), again.backlog("vulns"), again.backlog("audit")) == (6, 2, 1)
    assert drain(again, "soc") == [b'["h1","h5","v1","v2","s1","c1"]']
    assert drain(again, "vulns") == [b'["v1","v3"]']
    assert drain(again, "audit") == [b'["s1"]']
    assert (again.backlog("soc"), again.held_bytes) == (0, 0)


def test_a_read_no_webhook_wants_keeps_no_segment_but_moves_its_checkpoint(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry)
    spool.configure_webhooks(ROUTES)
    checkpoint = Checkpoint("1:2", "/waf.log", 300, b"{")
    assert spool.append("src", segment(EVENTS[1:4]), checkpoint)
    assert stored_events(tmp_path) == ""
    assert spool.held_bytes == 0 and spool.backlog("soc") == 0
    assert spool.checkpoints("src") == {"1:2": checkpoint}
    assert filtered(registry, "soc", "hit") == 3


def test_batches_skip_excluded_events_inside_a_run(tmp_path: Path) -> None:
    """Limits count only the events the webhook takes, and a batch rebuilt from its
    range (after a restart) skips the same ones."""
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry)
    routes = {"soc": ROUTES["soc"], "hits": frozenset({"hit"})}
    spool.configure_webhooks(routes)
    spool.append("src", segment(EVENTS[:5]))
    first = spool.next_batch("soc", 1, 1 << 20)
    assert first is not None and first.body == b'["h1"]'
    spool.finish_batch("soc", first)
    second = spool.next_batch("soc", 10, 1 << 20)
    assert second is not None and (second.body, second.count) == (b'["h5"]', 1)
    spool.close()
    again = open_spool(tmp_path, CollectorRegistry())
    again.configure_webhooks(routes)
    rebuilt = again.open_batch("soc")
    assert rebuilt is not None and rebuilt.body == second.body
    assert drain(again, "hits") == [b'["h1","h2","h3","h4","h5"]']


def test_a_reloaded_filter_applies_to_events_accepted_after_it(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry)
    everything = frozenset({"hit", "vulnerability", "system", "scope"})
    spool.configure_webhooks({"soc": everything, "all": everything})
    spool.append("src", segment(EVENTS[:2]))
    spool.configure_webhooks({"soc": Route(everything, SOC), "all": everything})
    spool.append("src", segment(EVENTS[:2]))
    assert spool.backlog("soc") == 3  # h1 and h2 from before, h1 after
    spool.configure_webhooks({"soc": everything, "all": everything})
    assert spool.backlog("soc") == 3  # what was excluded stays excluded
    assert drain(spool, "soc") == [b'["h1","h2","h1"]']


def test_a_vulnerability_kept_after_events_left_out_keeps_its_line_fields(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, CollectorRegistry())
    who = Identity("acme", "EU")
    form = Form("wallarm", "json_array", who)
    spool.configure_webhooks({"vulns": Route(frozenset({"vulnerability"}), None, form)})
    notification = {"object_type": "vulnerability", "link": "https://c/object/1"}
    fields = {"id": 1, "method": "PUT", "parameter": None, "path": "/a", "discovered_by": None}
    read = NewSegment()
    read.add("hit", b'"not kept"', hit("blocked", "sqli", "x"))
    read.add("vulnerability", orjson.dumps(notification), vuln("High", "x"), fields)
    spool.append("src", read)
    [body] = drain(spool, "vulns")
    [sent] = orjson.loads(body)
    assert sent == envelope(notification, who, fields)
    assert sent["details"]["vuln"]["method"] == "PUT"


def test_drop_oldest_counts_only_what_a_filtered_webhook_would_have_sent(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry, max_bytes=SMALL, when_full="drop_oldest")
    blocked = Route(frozenset({"hit"}), EventFilter(block_status=["blocked"]))
    spool.configure_webhooks({"a": blocked, "b": frozenset({"hit"})})
    first = [
        ("hit", big(0), hit("blocked", "sqli", "x")),
        ("hit", b'"m"', hit("monitored", "sqli", "x")),  # b's alone
    ]
    spool.append("src", segment(first))
    assert (spool.backlog("a"), spool.backlog("b")) == (1, 2)
    appended = fill_until_a_drop(spool, registry, first=1)
    assert registry.get_sample_value("tailhook_spool_dropped_events_total") == 2
    later = appended - 1
    assert (spool.backlog("a"), spool.backlog("b")) == (later, later)
    assert len(drain(spool, "a", max_bytes=1)) == later
    assert len(drain(spool, "b", max_bytes=1)) == later


@pytest.mark.parametrize(
    ("fragment", "problem"),
    [
        (
            "attack_types: [sqli, sqlx]",
            "webhooks[0].filter.attack_types[1]: must be one of sqli, xss, rce,",
        ),
        ("block_status: [blocked, dropped]", "webhooks[0].filter.block_status[1]: must be one of "
         "blocked, monitored, passed, not 'dropped'"),
        ("threats: [high]", "webhooks[0].filter.threats[0]: must be one of Low, Medium, High, "
         "not 'high'"),
        ("threats: []", "webhooks[0].filter.threats: must not be empty"),
        ("domains: []", "webhooks[0].filter.domains: must not be empty"),
        ("domain: [x]", "webhooks[0].filter.domain: unknown key"),
    ],
)  # fmt: skip
def test_check_config_refuses_values_no_event_can_have(fragment: str, problem: str) -> None:
    text = (
        "webhooks:\n  - name: soc\n    url: https://siem.example.com/\n    events: [hit]\n"
        f"    filter: {{{fragment}}}\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, {})
    [found] = [str(p) for p in refused.value.problems]
    assert found.startswith(problem), found


def test_the_worked_example_of_the_readme_is_a_valid_config() -> None:
    config = parse_config(
        "webhooks:\n"
        "  - name: soc\n"
        "    url: https://siem.example.com/hooks/wallarm\n"
        "    events: [hit]\n"
        "    filter:\n"
        "      block_status: [blocked]\n"
        "      attack_types: [sqli]\n"
        '      domains: ["*.shop.example.com"]\n',
        {},
    )
    given = config.webhooks[0].filter
    assert (given.block_status, given.attack_types, given.domains, given.threats) == (
        frozenset({"blocked"}),
        frozenset({"sqli"}),
        ("*.shop.example.com",),
        None,
    )
