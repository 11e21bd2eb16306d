"""Seeded generators of input lines for the differential test of the fast path.

``valid_native(kind, rng)`` builds a native line of that kind meant to be valid (it may
still hold an impossible date or a value the mapping refuses, as real lines may);
``valid_modsecurity(seeds, rng)`` perturbs a recorded ModSecurity transaction. The ways
to break them are in ``tests.support.event_mutations``.
"""

from __future__ import annotations

import copy
import random
from typing import Any

TEXTS = (
    "",
    "a",
    "x" * 40,
    "é",
    "中文",
    "😀",
    'quote " and \\ backslash',
    "line\nbreak\ttab",
    "\x01\x1f\x7f",
    "\u2028\u2029",
    "<script>alert(1)</script>",
    "' OR 1=1--",
    " ",
    "\u00a0",
)
ATTACKS = ("sqli", "xss", "rce", "ptrav", "scanner", "a", "a_1", "vpatch", "mass_assignment")
IPV4 = ("1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.100.200", "9.99.199.249")
IPV6 = (
    "::1",
    "::",
    "2001:db8::1",
    "2001:DB8::A",
    "2001:0db8:0000:0000:0000:0000:0000:0001",
    "fe80::1%eth0",
    "::ffff:1.2.3.4",
    "::FFFF:10.0.0.1",
    "::ffff:0102:0304",
    "::1.2.3.4",
    "1:2:3:4:5:6:7:8",
    "1::",
)
BAD_ADDRESSES = (
    "01.2.3.4",
    "1.2.3.04",
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.4\n",
    "\u0661.2.3.4",  # an Arabic-Indic digit one
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    "::ffff:01.2.3.4",
    "unix:/run/x.sock",
    "localhost",
    "xx",
)
BAD_DATES = (
    "2020-02-30T00:00:00Z",
    "2021-02-29T00:00:00Z",
    "2020-13-01T00:00:00Z",
    "2020-01-01T24:00:00Z",
    "2020-01-01T00:60:00Z",
    "2020-01-01T00:00:60Z",
    "2020-01-01T00:00:00+24:00",
    "2020-01-01T00:00:00+05:60",
    "2020-01-01T00:00:00",
    "2020-01-01T00:00:00Z\n",
    "2020-01-01T00:00:00.Z",
    "2020-1-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
)


def text(rng: random.Random, non_empty: bool = False) -> str:
    value = rng.choice(TEXTS) + (str(rng.randrange(1000)) if rng.random() < 0.5 else "")
    return value or ("v" if non_empty else value)


def time_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice((0, 1, 1591261367, 253402300799, rng.randrange(2**31)))
    if roll < 0.25:
        return rng.choice((0.0, 1591261367.5, rng.random() * 2e9, 253402300799.0))
    if roll < 0.3:
        return rng.choice(BAD_DATES)
    year = rng.randrange(1970, 2100)
    if rng.random() < 0.2:  # the edges of the fast path's fractions, and of fromisoformat
        year = rng.choice((rng.randrange(10000), 1, 1969, 2105, 2106, 2107, 9999))
    month, day = rng.randrange(1, 13), rng.randrange(1, 29)
    stamp = f"{year:04d}-{month:02d}-{day:02d}{rng.choice('TTTt ')}"
    stamp += f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    if rng.random() < 0.4:
        stamp += "." + "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 10)))
    zone = rng.choice(("Z", "Z", "z", "+00:00", "-05:30", "+14:00", "+23:59", "-23:59"))
    return stamp + zone


def address(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return ".".join(str(rng.randrange(256)) for _ in range(4))
    if roll < 0.75:
        return rng.choice(IPV4)
    if roll < 0.85:
        return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):X}"
    if roll < 0.97:
        return rng.choice(IPV6)
    return rng.choice(BAD_ADDRESSES)


def number(rng: random.Random) -> Any:
    return rng.choice((rng.random(), rng.random() * 100, rng.randrange(-5, 100), -rng.random()))


def native_hit(rng: random.Random) -> dict[str, Any]:
    point: list[Any] = [rng.choice(("get", "post", "header", "uri", "json_doc", "é"))]
    point += [rng.choice((text(rng), rng.randrange(10))) for _ in range(rng.randrange(4))]
    detection: dict[str, Any] = {
        "anomality": number(rng),
        "heur_distance": number(rng),
        "probability": number(rng),
        "stamps": [rng.randrange(100000) for _ in range(rng.randrange(5))],
        "regex": [rng.randrange(1000) for _ in range(rng.randrange(3))],
    }
    for key in ("stamps_hash", "regex_hash"):
        if rng.random() < 0.3:
            detection[key] = rng.choice(
                (0, -1, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31))
            )
    return {
        "event": "hit",
        "time": time_value(rng),
        "logged_at": time_value(rng),
        "ids": [text(rng, non_empty=True) for _ in range(rng.randrange(1, 4))],
        "domain": text(rng),
        "method": rng.choice(("GET", "POST", "x", "é")),
        "path": text(rng),
        "point": point,
        "payloads": [text(rng) for _ in range(rng.randrange(3))],
        "attack_type": rng.choice(ATTACKS),
        "block_status": rng.choice(("blocked", "monitored", "passed")),
        "client": {
            "addr": address(rng),
            "port": rng.choice((0, 65535, rng.randrange(65536))),
            "country": rng.choice((None, "DE", "", "中")),
            "datacenter": text(rng),
            "tor": text(rng),
        },
        "response": {
            "status": rng.choice((0, 200, 403, 999)),
            "length": rng.choice((0, rng.randrange(10**6), 2**63 - 1)),
            "time_ms": rng.randrange(10**4),
        },
        "detection": detection,
    }


def native_vulnerability(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event": "vulnerability",
        "time": time_value(rng),
        "id": rng.choice((0, rng.randrange(10**7), 2**63 - 1)),
        "title": text(rng, non_empty=True),
        "target": text(rng, non_empty=True),
        "vuln_type": text(rng, non_empty=True),
        "domain": text(rng),
        "threat": rng.choice(("Low", "Medium", "High")),
    }
    for key in ("method", "parameter", "path", "discovered_by"):
        if rng.random() < 0.5:
            doc[key] = rng.choice((None, text(rng)))
    return doc


def person(rng: random.Random) -> dict[str, str]:
    return {"name": text(rng, non_empty=True), "email": text(rng, non_empty=True)}


def native_system(rng: random.Random) -> dict[str, Any]:
    action = rng.choice(
        (
            "create_user",
            "update_user",
            "delete_user",
            "disable_integration",
            "delete_integration",
            "integration_broken",
        )
    )
    doc: dict[str, Any] = {"event": "system", "time": time_value(rng), "action": action}
    if action.endswith("_user"):
        doc["actor"] = person(rng)
        doc["user"] = person(rng)
        if action != "delete_user" or rng.random() < 0.5:
            doc["user"]["role"] = text(rng, non_empty=True)
    else:
        if rng.random() < 0.6:
            doc["actor"] = person(rng)
        doc["integration"] = {"name": text(rng, non_empty=True), "type": text(rng, non_empty=True)}
    return doc


def native_scope(rng: random.Random) -> dict[str, Any]:
    return {
        "event": "scope",
        "time": time_value(rng),
        "change": rng.choice(("added", "removed", "changed")),
        "kind": rng.choice(("ip", "host", "domain", "service")),
        "values": [text(rng, non_empty=True) for _ in range(rng.randrange(1, 4))],
    }


NATIVE = {
    "hit": native_hit,
    "vulnerability": native_vulnerability,
    "system": native_system,
    "scope": native_scope,
}


def shuffled(doc: Any, rng: random.Random) -> Any:
    """The same document with the keys of its objects in another order."""
    if isinstance(doc, dict):
        items = list(doc.items())
        rng.shuffle(items)
        return {key: shuffled(value, rng) for key, value in items}
    if isinstance(doc, list):
        return [shuffled(value, rng) for value in doc]
    return doc


def valid_native(kind: str, rng: random.Random) -> dict[str, Any]:
    doc = NATIVE[kind](rng)
    return shuffled(doc, rng) if rng.random() < 0.3 else doc


def valid_modsecurity(seeds: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """A recorded transaction with its values changed within their types."""
    doc = copy.deepcopy(rng.choice(seeds))
    txn = doc["transaction"]
    if "transaction_id" in txn:  # ModSecurity 2
        txn["remote_address"] = address(rng)
        txn["remote_port"] = rng.randrange(65536)
        txn["transaction_id"] = text(rng, non_empty=True)
        if rng.random() < 0.2:
            txn["time"] = rng.choice(
                (
                    "30/Feb/2026:05:59:52 +0000",
                    "29/Nov/2026:05:59:52.1 -0130",
                    "29/Foo/2026:05:59:52 +0000",
                )
            )
        doc["response"]["status"] = rng.choice((0, 200, 403, 999))
        messages = doc.get("audit_data", {}).get("messages")
        if messages and rng.random() < 0.3:
            rng.shuffle(messages)
    else:  # libmodsecurity 3
        txn["client_ip"] = address(rng)
        txn["client_port"] = rng.randrange(65536)
        txn["unique_id"] = text(rng, non_empty=True)
        if rng.random() < 0.2:
            txn["time_stamp"] = rng.choice(
                ("Sat Feb 30 12:13:53 2026", "Sun Nov  1 01:02:03 2026", "Foo Bar 28 12:13:53 2026")
            )
        txn["response"]["http_code"] = rng.choice((0, 200, 403, 999))
        for message in txn.get("messages", []):
            if rng.random() < 0.3:
                message["details"]["ruleId"] = str(rng.randrange(10**6))
            if rng.random() < 0.2:
                message["details"]["severity"] = rng.choice(("0", "2", "5", "9"))
    return shuffled(doc, rng) if rng.random() < 0.3 else doc
