"""The ModSecurity format reads ModSecurity 2's JSON audit log (Apache's mod_security2):
the 30 real lines in tests/data/modsecurity/apache-*.jsonl (Debian 12's apache2 2.4 with
mod_security2 2.9.7 and CRS 3.3.4, recorded by tests/support/record_samples.py) become
the same hits as libmodsecurity 3's, and the message strings are parsed safely."""

from __future__ import annotations

import copy
import time
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.errors import RejectedLine
from agent.formats import MappingContext
from agent.formats.modsecurity import ModSecurityFormat
from agent.formats.modsecurity_audit import (
    apache_time_seconds,
    read_v2_message,
    split_request_line,
    v2_unescape,
)
from agent.formats.native import InvalidValue, list_hash
from agent.schemas import python_validator

DATA = Path(__file__).parent / "data" / "modsecurity"
CTX = MappingContext()

#: (path, type, point, payloads) of each line in file order; None for a clean request.
EXPECTED: list[tuple[str, tuple[str, list[str], list[str]] | None]] = [
    ("xss", ("xss", ["get", "q"], ["<script>alert(1)</script>"])),
    ("clean-get", None),
    # CRS 930100 logs REQUEST_URI_RAW first: ARGS:file is the more exact point
    ("ptrav", ("ptrav", ["get", "file"], ["../../../../etc/passwd"])),
    ("rce", ("rce", ["get", "host"], ["127.0.0.1;cat /etc/passwd", "127.0.0.1 cat/etc/passwd"])),
    ("clean-form", None),
    ("scanner", ("scanner", ["header", "USER-AGENT"], ["Mozilla/5.00 (Nikto/2.1.6)"])),
    ("header", ("xss", ["header", "REFERER"], ["<script>alert(1)</script>"])),
    ("clean-json", None),
    ("cookie", ("sqli", ["header", "COOKIE", "cookie", "session"], ["' or 1=1--"])),
    ("form", ("sqli", ["post", "username"], ["admin' or '1'='1"])),
    ("clean-cookie", None),
    ("json", ("xss", ["post", "q"], ["<script>alert(1)</script>"])),  # v3: ARGS:json.q
    ("ipv6", ("sqli", ["get", "id"], ["1' UNION SELECT password FROM users--"])),
    ("clean-ipv6", None),
    ("sqli", ("sqli", ["get", "id"], ["'or 1=1--"])),
]


@cache
def shared_format() -> ModSecurityFormat:
    return ModSecurityFormat()


@pytest.fixture
def modsec() -> ModSecurityFormat:
    return shared_format()


def sample(name: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line) for line in (DATA / f"apache-{name}.jsonl").read_bytes().splitlines()
    ]


def convert(modsec: ModSecurityFormat, line: Any) -> dict[str, Any]:
    event_type, notification = modsec.convert(line, CTX)
    assert event_type == "hit"
    assert notification is not None
    return notification


def rejected(modsec: ModSecurityFormat, line: Any) -> str:
    with pytest.raises(RejectedLine) as caught:
        modsec.convert(line, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("invalid_schema", "hit")
    return caught.value.detail


@pytest.mark.parametrize(
    ("name", "status", "code"), [("blocked", "blocked", 403), ("monitored", "monitored", 200)]
)
def test_every_recorded_apache_line_maps_like_the_nginx_ones(
    modsec: ModSecurityFormat, name: str, status: str, code: int
) -> None:
    validator = python_validator("notification-hit")
    lines = sample(name)
    assert len(lines) == len(EXPECTED) == 15
    for line, (probe, expected) in zip(lines, EXPECTED, strict=True):
        assert line["request"]["request_line"].split(" ")[1].startswith(f"/{name}-{probe}")
        event_type, hit = modsec.convert(line, CTX)
        if expected is None:
            assert (event_type, hit) == ("hit", None), probe
            continue
        assert hit is not None, probe
        validator.validate(hit)
        assert (hit["type"], hit["point"], hit["payloads"]) == expected, probe
        assert (hit["block_status"], hit["response_status"]) == (status, code), probe
        assert hit["id"] == [line["transaction"]["transaction_id"]]
        assert hit["remote_addr6" if probe == "ipv6" else "remote_addr4"] in ("::1", "127.0.0.1")


def test_the_first_blocked_apache_line_field_for_field(modsec: ModSecurityFormat) -> None:
    stamps = [941100, 941110, 941160, 949110, 980130]
    assert convert(modsec, sample("blocked")[0]) == {
        "anomality": 0.0,
        "domain": "shop.example.com",
        "heur_distance": 15.0,
        "method": "GET",
        "parameter": "GET_q_value",
        "path": "/blocked-xss",
        "payloads": ["<script>alert(1)</script>"],
        "point": ["get", "q"],
        "probability": 15.0,
        "remote_country": None,
        "remote_port": 41806,
        "remote_addr4": "127.0.0.1",
        "remote_addr6": None,
        "datacenter": "unknown",
        "tor": "none",
        "request_time": 1795931992,  # 29/Nov/2026:05:59:52.408320 +0000
        "create_time": 1795931992,
        "response_len": 239,
        "response_status": 403,
        "response_time": 0,
        "stamps": stamps,
        "regex": [],
        "stamps_hash": list_hash(stamps),
        "regex_hash": -2147483648,
        "type": "xss",
        "block_status": "blocked",
        "id": ["awu_WJ5y5bkmU7AW_N5GiwAAAAI"],
        "object_type": "hit",
    }


def test_block_status_follows_engine_mode_and_the_interception(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[0]
    audit = line["audit_data"]
    assert (audit["engine_mode"], audit["action"]["intercepted"]) == ("ENABLED", True)
    audit["engine_mode"] = "DETECTION_ONLY"
    assert convert(modsec, line)["block_status"] == "monitored"
    del audit["engine_mode"]  # before 2.9.1: the interception alone tells
    assert convert(modsec, line)["block_status"] == "blocked"
    audit["engine_mode"] = "ENABLED"
    del audit["action"]  # a warning below the anomaly threshold, answered 403 by the app
    assert convert(modsec, line)["block_status"] == "monitored"


def test_a_header_logged_transformed_keeps_its_logged_value(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[5]  # scanner: the CRS logged the user agent lower-cased
    line["request"]["headers"]["User-Agent"] = "Nikto"  # not what was logged: left alone
    assert convert(modsec, line)["payloads"] == ["mozilla/5.00 (nikto/2.1.6)"]
    del line["request"]["headers"]["User-Agent"]
    assert convert(modsec, line)["payloads"] == ["mozilla/5.00 (nikto/2.1.6)"]


META = (
    ' [file "/r.conf"] [line "1"] [id "941100"] [msg "XSS \\"here\\""] '
    '[data "Matched Data: x found within ARGS:q: {value}"] [severity "CRITICAL"] '
    '[tag "attack-xss"] [tag "OWASP_CRS"]'
)


def test_a_message_string_is_read_with_its_escapes() -> None:
    value = "\\x22a\\x5cb\\xc3\\xa9\\x01"
    message = read_v2_message("Warning. Pattern match at ARGS:q." + META.format(value=value), "/m")
    assert (message.rule_id, message.text, message.tags) == (
        941100,
        'XSS "here"',
        ("attack-xss", "OWASP_CRS"),
    )
    assert message.data == 'Matched Data: x found within ARGS:q: "a\\bé\x01'
    assert message.match == "Warning. Pattern match at ARGS:q."


def test_metadata_in_the_operator_text_cannot_forge_the_rule() -> None:
    forged = 'Warning. Matched phrase "x" at ARGS:a [file "f"] [id "1"] [tag "attack-rce"].'
    message = read_v2_message(forged + META.format(value="v"), "/m")
    assert (message.rule_id, message.tags) == (941100, ("attack-xss", "OWASP_CRS"))


def test_a_value_cut_at_512_characters_loses_its_ellipsis() -> None:
    whole = "<script>" + "A" * 600
    head = "Matched Data: x found within ARGS:q: "
    cut = (head + whole)[:509] + "..."
    assert len(cut) == 512
    message = read_v2_message("Warning." + META.replace("{value}", "").replace(head, cut), "/m")
    assert message.data == (head + whole)[:509]
    partial = (head + whole)[:506] + "\\x2..."  # an escape cut in the middle is dropped
    assert len(partial) == 512
    message = read_v2_message("Warning." + META.replace("{value}", "").replace(head, partial), "/m")
    assert message.data == (head + whole)[:506]


def test_a_message_without_a_rule_id_rejects_the_line(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[0]
    line["audit_data"]["messages"][1] = 'Warning. Something [file "f"] [line "2"]'
    assert rejected(modsec, line) == "/audit_data/messages/1: the message names no rule id"


def test_message_parsing_takes_linear_time_on_hostile_strings() -> None:
    started = time.monotonic()
    for hostile in (
        ' [file "' * 100_000,
        '[id "' + "\\" * 1_000_000,
        ' [file "x"]' + ' [a "' * 100_000,
        ' [file "x"] [data "' + '\\"' * 500_000 + '"]',
    ):
        with pytest.raises(InvalidValue):
            read_v2_message(hostile, "/m")
    assert v2_unescape("\\x41" * 200_000) == "A" * 200_000
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("29/Nov/2026:05:59:52.408320 +0000", 1795931992),
        ("29/Nov/2026:07:29:52 +0130", 1795931992),
        ("28/Nov/2026:23:59:52.1 -0600", 1795931992),
    ],
)
def test_apache_time_carries_its_zone(stamp: str, seconds: int) -> None:
    assert apache_time_seconds(stamp) == seconds


@pytest.mark.parametrize(
    ("line", "parts"),
    [
        ("GET /a?b=1 HTTP/1.1", ("GET", "/a?b=1")),
        ("GET /a b HTTP/1.0", ("GET", "/a b")),
        ("GET /old", ("GET", "/old")),  # HTTP/0.9
    ],
)
def test_split_request_line(line: str, parts: tuple[str, str]) -> None:
    assert split_request_line(line) == parts


def mutated(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    line = copy.deepcopy(sample("blocked")[0])
    target = line
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return line


@pytest.mark.parametrize(
    "line",
    [
        mutated(("request", "request_line"), KeyError),  # SecAuditLogParts without B
        mutated(("response", "status"), KeyError),  # without F
        mutated(("request",), KeyError),
        mutated(("request", "request_line"), "GET"),
        mutated(("transaction", "remote_port"), "41806"),
        mutated(("transaction", "time"), "2026-11-29T05:59:52Z"),
        mutated(("transaction", "time"), "31/Feb/2026:05:59:52 +0000"),
        mutated(("transaction", "time"), "29/Foo/2026:05:59:52 +0000"),
        mutated(("audit_data", "messages"), [{"message": "x"}]),
        mutated(("audit_data", "action", "intercepted"), "true"),
        mutated(("request", "headers", "Host"), ["a"]),
    ],
)
def test_invalid_apache_lines_are_invalid_schema_hits(modsec: ModSecurityFormat, line: Any) -> None:
    assert rejected(modsec, line)
