"""The ModSecurity format: the 26 real audit log lines (nginx + libmodsecurity 3.0.9 + CRS
3.3.4, in tests/data/modsecurity) become valid hit notifications with sensible types."""

from __future__ import annotations

import copy
import time
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.errors import RejectedLine
from agent.formats import MappingContext, load_format
from agent.formats.modsecurity import (
    ModSecurityFormat,
    against_variable,
    found_within,
    host_without_port,
    request_path,
)
from agent.formats.modsecurity_audit import asctime_seconds
from agent.formats.native import list_hash
from agent.schemas import python_validator

DATA = Path(__file__).parent / "data" / "modsecurity"
CTX = MappingContext()

#: (type, point) of each sample line, in file order; both files hold the same 13 attacks.
EXPECTED = [
    ("sqli", ["get", "id"]),  # /?id='or 1=1--
    ("sqli", ["get", "cat"]),  # UNION SELECT
    ("xss", ["get", "q"]),  # <script>
    ("ptrav", ["get", "file"]),  # ../../../../etc/passwd
    ("rce", ["get", "host"]),  # 127.0.0.1;cat /etc/passwd
    ("scanner", ["header", "USER-AGENT"]),  # Nikto
    ("sqli", ["post", "username"]),  # form body
    ("xss", ["post", "json.q"]),  # JSON body
    ("rce", ["get", "page"]),  # php://filter (CRS 933, PHP injection)
    ("sqli", ["get", "id"]),  # IPv6 client
    ("ptrav", ["path"]),  # /.env
    ("rce", ["get", "x"]),  # ${jndi:ldap://...}
    ("sqli", ["header", "COOKIE", "cookie", "session"]),  # cookie
]


@cache
def shared_format() -> ModSecurityFormat:
    return ModSecurityFormat()


@pytest.fixture
def modsec() -> ModSecurityFormat:
    return shared_format()


def sample(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (DATA / f"{name}.jsonl").read_bytes().splitlines()]


def convert(modsec: ModSecurityFormat, line: Any) -> dict[str, Any]:
    event_type, notification = modsec.convert(line, CTX)
    assert event_type == "hit"
    assert notification is not None
    return notification


@pytest.mark.parametrize(("name", "status"), [("blocked", "blocked"), ("monitored", "monitored")])
def test_every_sample_line_is_a_valid_hit_with_a_sensible_type(
    modsec: ModSecurityFormat, name: str, status: str
) -> None:
    validator = python_validator("notification-hit")
    lines = sample(name)
    assert len(lines) == len(EXPECTED) == 13
    for line, (kind, point) in zip(lines, EXPECTED, strict=True):
        hit = convert(modsec, line)
        validator.validate(hit)
        assert (hit["type"], hit["point"], hit["block_status"]) == (kind, point, status)
        assert hit["id"] == [line["transaction"]["unique_id"]]
        assert hit["payloads"], hit


def test_the_first_blocked_line_field_for_field(modsec: ModSecurityFormat) -> None:
    assert convert(modsec, sample("blocked")[0]) == {
        "anomality": 0.0,
        "domain": "shop.example.com",
        "heur_distance": 5.0,
        "method": "GET",
        "parameter": "GET_id_value",
        "path": "/",
        "payloads": ["'or 1=1--"],
        "point": ["get", "id"],
        "probability": 5.0,
        "remote_country": None,
        "remote_port": 42332,
        "remote_addr4": "127.0.0.1",
        "remote_addr6": None,
        "datacenter": "unknown",
        "tor": "none",
        "request_time": 1795868033,  # Sat Nov 28 12:13:53 2026, read as UTC
        "create_time": 1795868033,
        "response_len": 153,
        "response_status": 403,
        "response_time": 0,
        "stamps": [942100, 949110],
        "regex": [],
        "stamps_hash": list_hash([942100, 949110]),
        "regex_hash": -2147483648,
        "type": "sqli",
        "block_status": "blocked",
        "id": ["179586803398.676308"],
        "object_type": "hit",
    }


def test_the_registry_builds_the_modsecurity_format() -> None:
    assert load_format("modsecurity").convert(sample("blocked")[0], CTX)[0] == "hit"


@pytest.mark.parametrize("name", ["blocked", "monitored"])
def test_the_ipv6_client_goes_to_remote_addr6(modsec: ModSecurityFormat, name: str) -> None:
    hit = convert(modsec, sample(name)[9])
    assert (hit["remote_addr4"], hit["remote_addr6"]) == (None, "::1")


def test_monitored_lines_keep_the_upstream_status(modsec: ModSecurityFormat) -> None:
    statuses = [convert(modsec, line)["response_status"] for line in sample("monitored")]
    assert statuses[0] == 200 and statuses[6] == 405 and 404 in statuses


def test_payloads_are_the_distinct_logged_values_of_the_variable(
    modsec: ModSecurityFormat,
) -> None:
    lines = sample("blocked")
    # 942270 logs the value cut to "1 UNION SELECT username,pas": left out as a prefix
    assert convert(modsec, lines[1])["payloads"] == ["1 UNION SELECT username,password FROM users"]
    # 932160 logs the value after its transformations: a second payload
    assert convert(modsec, lines[4])["payloads"] == [
        "127.0.0.1;cat /etc/passwd",
        "127.0.0.1 cat/etc/passwd",
    ]


def test_a_transaction_without_rule_messages_sends_nothing(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[0]
    line["transaction"]["messages"] = []
    assert modsec.convert(line, CTX) == ("hit", None)
    del line["transaction"]["messages"]
    del line["transaction"]["producer"]
    assert modsec.convert(line, CTX) == ("hit", None)


def test_an_enabled_engine_that_let_the_request_through_is_monitored(
    modsec: ModSecurityFormat,
) -> None:
    line = sample("blocked")[0]
    transaction = line["transaction"]
    transaction["response"]["http_code"] = 200
    transaction["messages"] = transaction["messages"][:1]  # below the anomaly threshold
    assert convert(modsec, line)["block_status"] == "monitored"


def test_a_coraza_line_with_its_extra_fields_maps(modsec: ModSecurityFormat) -> None:
    line = sample("monitored")[0]
    transaction = line["transaction"]
    transaction["is_interrupted"] = True
    transaction["producer"]["secrules_engine"] = "Enabled"
    transaction["request"]["http_version"] = "1.1"
    transaction["request"]["hostname"] = "shop.example.com"
    transaction["time_stamp"] = "Wed May  6 20:22:18 2020"
    hit = convert(modsec, line)
    assert hit["block_status"] == "blocked"
    assert hit["request_time"] == 1588796538


def test_a_rule_with_empty_data_is_located_by_its_match(modsec: ModSecurityFormat) -> None:
    # as logged by ModSecurity-envoy for a custom rule without logdata
    line = sample("blocked")[5]
    transaction = line["transaction"]
    transaction["request"]["headers"] = {"host": "172.17.0.2:32608", "user-agent": "scammer"}
    transaction["messages"] = [
        {
            "message": "blocked scammer",
            "details": {
                "match": "Matched \"Operator `Rx' with parameter `scammer' against variable "
                "`REQUEST_HEADERS:user-agent' (Value: `scammer' )",
                "reference": "o0,7v133,7",
                "ruleId": "107",
                "file": "<<reference missing or not informed>>",
                "lineNumber": "7",
                "data": "",
                "severity": "0",
                "ver": "",
                "rev": "",
                "tags": [],
                "accuracy": "0",
                "maturity": "0",
            },
        }
    ]
    hit = convert(modsec, line)
    assert (hit["type"], hit["point"], hit["payloads"]) == (
        "vpatch",
        ["header", "USER-AGENT"],
        ["scammer"],
    )
    assert (hit["domain"], hit["stamps"], hit["probability"]) == ("172.17.0.2", [107], 0.0)


@pytest.mark.parametrize(
    ("data", "found"),
    [
        ("Matched Data: x found within REQUEST_URI: /a: b", (("REQUEST_URI", None), "/a: b")),
        ("Matched Data: y found within nothing found within ARGS:a:b: v", (("ARGS", "a:b"), "v")),
        ("Matched Data: z found within ARGS:a", None),
        ("", None),
    ],
)
def test_found_within(data: str, found: Any) -> None:
    assert found_within(data) == found


def test_variable_parsers_take_linear_time_on_hostile_values() -> None:
    started = time.monotonic()
    hostile = " found within A:" * 100_000 + "x"
    assert found_within(hostile) == (("A", None), hostile[len(" found within A: ") :])
    assert found_within(" found within A_" * 100_000) is None
    assert against_variable("against variable `A:" + "' (Value: `" * 100_000 + "' ") is None
    assert time.monotonic() - started < 1.0


def test_a_custom_rule_is_typed_by_its_attack_tag(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[0]
    details = line["transaction"]["messages"][0]["details"]
    details.update(ruleId="10001", tags=["attack-xss"])
    assert convert(modsec, line)["type"] == "xss"


def test_args_of_a_post_query_string_are_get_points(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[6]  # POST /login, ARGS:username from the body
    line["transaction"]["request"]["uri"] = "/login?username=x"
    assert convert(modsec, line)["point"] == ["get", "username"]


def test_a_client_ip_that_is_not_an_address_leaves_both_null(modsec: ModSecurityFormat) -> None:
    line = sample("blocked")[0]
    line["transaction"]["client_ip"] = "unix:"
    hit = convert(modsec, line)
    assert (hit["remote_addr4"], hit["remote_addr6"]) == (None, None)
    python_validator("notification-hit").validate(hit)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.com:8080", "shop.example.com"),
        ("[::1]:8080", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.1:80", "10.0.0.1"),
    ],
)
def test_host_without_port(host: str, domain: str) -> None:
    assert host_without_port(host) == domain


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/", "/"),
        ("/search?q=1", "/search"),
        ("/a/b#top", "/a/b"),
        ("http://shop.example.com/a/b?x=1", "/a/b"),
        ("https://shop.example.com", "/"),
    ],
)
def test_request_path(uri: str, path: str) -> None:
    assert request_path(uri) == path


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [("Sat Nov 28 12:13:53 2026", 1795868033), ("Thu Jan  1 00:00:00 1970", 0)],
)
def test_asctime_is_read_as_utc(stamp: str, seconds: int) -> None:
    assert asctime_seconds(stamp) == seconds


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
        [],
        "transaction",
        {},
        {"transaction": {}},
        {**sample("blocked")[0], "audit_data": {}},
        mutated(("transaction", "unique_id"), KeyError),
        mutated(("transaction", "client_port"), "42332"),
        mutated(("transaction", "request", "uri"), KeyError),
        mutated(("transaction", "response", "http_code"), "403"),
        mutated(("transaction", "time_stamp"), "2026-11-28T12:13:53Z"),
        mutated(("transaction", "time_stamp"), "Sat Feb 30 12:13:53 2026"),
        mutated(("transaction", "time_stamp"), "Sat Foo 28 12:13:53 2026"),
        mutated(("transaction", "messages", 0, "details", "ruleId"), 942100),
        mutated(("transaction", "messages", 0, "details", "ruleId"), "94a"),
        mutated(("transaction", "messages", 0, "details", "tags"), "attack-sqli"),
        mutated(("transaction", "request", "headers", "Host"), ["a"]),
    ],
)
def test_invalid_transactions_are_invalid_schema_hits(modsec: ModSecurityFormat, line: Any) -> None:
    with pytest.raises(RejectedLine) as caught:
        modsec.convert(line, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("invalid_schema", "hit")
    assert caught.value.detail


def test_a_header_value_logged_cut_short_is_the_header_as_sent(modsec: ModSecurityFormat) -> None:
    # libmodsecurity 3.0.9 can log a header's value cut after the match, lower-cased (seen
    # on nginx: "mozilla/5.00 (nikto"); the payload is the header as the client sent it
    line = sample("blocked")[5]
    details = line["transaction"]["messages"][0]["details"]
    details["data"] = "Matched Data: nikto found within REQUEST_HEADERS:User-Agent: nikto/2"
    hit = convert(modsec, line)
    assert (hit["point"], hit["payloads"]) == (["header", "USER-AGENT"], ["Nikto/2.1.6"])
