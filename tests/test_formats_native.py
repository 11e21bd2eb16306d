"""The native format: the contract's example lines map to the expected notifications,
every mapped object holds to its output schema, and bad lines are rejected by reason."""

from __future__ import annotations

import copy
import zlib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import RejectedLine
from agent.formats import MappingContext, load_format
from agent.formats.native import NativeFormat, list_hash, parameter_from_point
from agent.schemas import python_validator

DATA = Path(__file__).parent / "data"
CTX = MappingContext(console_url="https://my.wallarm.com")

# The four example lines of CONTRACT §4, verbatim.
HIT_LINE = (
    '{"event":"hit","time":"2020-06-04T09:02:47Z","logged_at":"2020-06-04T09:03:01Z",'
    '"ids":["hits_production_6396_202006_v_1","vpuRfnIBVc0URvOZ6ALA"],"domain":"example.com",'
    '"method":"GET","path":"/","point":["get","id"],"payloads":["\'or 1=1--"],'
    '"attack_type":"sqli","block_status":"monitored","client":{"addr":"111.17.1.1",'
    '"port":41616,"country":null,"datacenter":"unknown","tor":"none"},"response":'
    '{"status":404,"length":345,"time_ms":257},"detection":{"anomality":0.9806949806949808,'
    '"heur_distance":36.28571421111111,"probability":36.11111118571429,"stamps":[1173],'
    '"regex":[]}}'
)
VULNERABILITY_LINE = (
    '{"event":"vulnerability","time":"2020-06-04T09:10:00Z","id":282157,"title":"Missing '
    "\\\"Strict-Transport-Security\\\" header in server's response at '93.184.216.34:443'\","
    '"target":"93.184.216.34:443","vuln_type":"Info","domain":"www.example.com","threat":"Low"}'
)
SYSTEM_LINE = (
    '{"event":"system","time":"2020-06-04T09:11:00Z","action":"create_user","actor":'
    '{"name":"John Doe","email":"johndoe@example.com"},"user":{"name":"John Smith",'
    '"email":"johnsmith@example.com","role":"analyst"}}'
)
SCOPE_LINE = (
    '{"event":"scope","time":"2020-06-04T09:12:00Z","change":"added","kind":"ip",'
    '"values":["8.8.8.8"]}'
)

EXPECTED_HIT = {
    "anomality": 0.9806949806949808,
    "domain": "example.com",
    "heur_distance": 36.28571421111111,
    "method": "GET",
    "parameter": "GET_id_value",
    "path": "/",
    "payloads": ["'or 1=1--"],
    "point": ["get", "id"],
    "probability": 36.11111118571429,
    "remote_country": None,
    "remote_port": 41616,
    "remote_addr4": "111.17.1.1",
    "remote_addr6": None,
    "datacenter": "unknown",
    "tor": "none",
    "request_time": 1591261367,
    "create_time": 1591261381,
    "response_len": 345,
    "response_status": 404,
    "response_time": 257,
    "stamps": [1173],
    "regex": [],
    "stamps_hash": 1672285789,
    "regex_hash": -2147483648,
    "type": "sqli",
    "block_status": "monitored",
    "id": ["hits_production_6396_202006_v_1", "vpuRfnIBVc0URvOZ6ALA"],
    "object_type": "hit",
}


@cache
def shared_native() -> NativeFormat:
    return NativeFormat()


@pytest.fixture
def native() -> NativeFormat:
    return shared_native()


def hit_event() -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(HIT_LINE)
    return event


def convert(native: NativeFormat, event: Any) -> tuple[str, dict[str, Any]]:
    event_type, notification = native.convert(event, CTX)
    assert notification is not None
    return event_type, notification


def test_the_contract_hit_maps_to_the_wallarm_hit_field_for_field(native: NativeFormat) -> None:
    assert convert(native, orjson.loads(HIT_LINE)) == ("hit", EXPECTED_HIT)


def test_the_format_registry_builds_the_native_format() -> None:
    assert load_format("native").convert(orjson.loads(HIT_LINE), CTX) == ("hit", EXPECTED_HIT)


def test_computed_hashes_are_the_signed_crc32_of_the_comma_joined_list() -> None:
    assert list_hash([1173]) == zlib.crc32(b"1173") == 1672285789
    assert list_hash([]) == -2147483648
    unsigned = zlib.crc32(b"1,22,333")
    assert list_hash([1, 22, 333]) == (unsigned - 2**32 if unsigned >= 2**31 else unsigned)
    assert any(list_hash([n]) < 0 for n in range(1, 50)), "some hash must come out negative"
    assert all(-(2**31) <= list_hash([n, n + 1]) < 2**31 for n in range(1000))


def test_hashes_given_by_the_node_are_kept(native: NativeFormat) -> None:
    event = hit_event()
    event["detection"].update(stamps_hash=-22207546, regex_hash=12, regex=[5, 6])
    _, hit = convert(native, event)
    assert (hit["stamps_hash"], hit["regex_hash"], hit["regex"]) == (-22207546, 12, [5, 6])


def test_unknown_fields_of_a_hit_are_ignored(native: NativeFormat) -> None:
    event = hit_event()
    event["final_wallarm_mode"] = "monitoring"
    event["client"]["asn"] = 64500
    event["detection"]["libproton_version"] = "4.8.0"
    assert convert(native, event) == ("hit", EXPECTED_HIT)


def test_an_ipv6_client_goes_to_remote_addr6(native: NativeFormat) -> None:
    event = hit_event()
    event["client"]["addr"] = "2001:db8::17"
    _, hit = convert(native, event)
    assert (hit["remote_addr4"], hit["remote_addr6"]) == (None, "2001:db8::17")


def test_an_ipv4_mapped_ipv6_client_counts_as_ipv4(native: NativeFormat) -> None:
    event = hit_event()
    event["client"]["addr"] = "::ffff:111.17.1.1"
    _, hit = convert(native, event)
    assert (hit["remote_addr4"], hit["remote_addr6"]) == ("111.17.1.1", None)


@pytest.mark.parametrize(
    ("time", "seconds"),
    [
        (1591261367, 1591261367),
        (1591261367.999, 1591261367),
        ("2020-06-04T09:02:47Z", 1591261367),
        ("2020-06-04T09:02:47.123456789Z", 1591261367),
        ("2020-06-04T11:02:47+02:00", 1591261367),
        ("2020-06-04T08:32:47.5-00:30", 1591261367),
        ("2020-06-04t09:02:47z", 1591261367),
        ("2020-06-04 09:02:47Z", 1591261367),
    ],
)
def test_times_become_whole_unix_seconds(native: NativeFormat, time: Any, seconds: int) -> None:
    event = hit_event()
    event["time"] = time
    assert convert(native, event)[1]["request_time"] == seconds


@pytest.mark.parametrize(
    ("point", "parameter"),
    [
        (["get", "id"], "GET_id_value"),
        (["post"], "POST_value"),
        (["uri"], "URI_value"),
        (["header", "USER-AGENT"], "HEADER_USER-AGENT_value"),
        (["post", "json_doc", "hash", "q"], "POST_json_doc_hash_q_value"),
        (["get", "ids", "array", 0], "GET_ids_array_0_value"),
    ],
)
def test_parameter_rule(point: list[Any], parameter: str) -> None:
    assert parameter_from_point(point) == parameter


def test_the_contract_vulnerability(native: NativeFormat) -> None:
    assert convert(native, orjson.loads(VULNERABILITY_LINE)) == (
        "vulnerability",
        {
            "title": 'Missing "Strict-Transport-Security" header in server\'s response at '
            "'93.184.216.34:443'",
            "source": "93.184.216.34:443",
            "type": "Info",
            "domain": "www.example.com",
            "threat": "Low",
            "link": "https://my.wallarm.com/object/282157",
            "summary": "New vulnerability identified",
            "object_type": "vulnerability",
        },
    )


def test_a_console_url_with_a_trailing_slash_makes_one_slash(native: NativeFormat) -> None:
    ctx = MappingContext(console_url="https://us1.my.wallarm.com/")
    _, vulnerability = native.convert(orjson.loads(VULNERABILITY_LINE), ctx)
    assert vulnerability is not None
    assert vulnerability["link"] == "https://us1.my.wallarm.com/object/282157"


def test_the_contract_system_event(native: NativeFormat) -> None:
    assert convert(native, orjson.loads(SYSTEM_LINE)) == (
        "system",
        {
            "object_type": "system",
            "notification_type": "create_user",
            "summary": "New user added",
            "description": "A new user John Smith <johnsmith@example.com> with the role analyst "
            "was added by John Doe <johndoe@example.com>.",
            "time": 1591261860,
            "details": {
                "actor": {"name": "John Doe", "email": "johndoe@example.com"},
                "user": {"name": "John Smith", "email": "johnsmith@example.com", "role": "analyst"},
            },
        },
    )


JOHN = {"name": "John Doe", "email": "johndoe@example.com"}
SMITH = {"name": "John Smith", "email": "johnsmith@example.com", "role": "admin"}
SOC = {"name": "soc", "type": "webhook"}


@pytest.mark.parametrize(
    ("fields", "summary", "description"),
    [
        (
            {"action": "update_user", "actor": JOHN, "user": SMITH},
            "User updated",
            "The user John Smith <johnsmith@example.com> was updated by John Doe "
            "<johndoe@example.com>; the role is now admin.",
        ),
        (
            {"action": "delete_user", "actor": JOHN, "user": SMITH},
            "User deleted",
            "The user John Smith <johnsmith@example.com> was deleted by John Doe "
            "<johndoe@example.com>.",
        ),
        (
            {"action": "disable_integration", "actor": JOHN, "integration": SOC},
            "Integration disabled",
            "The integration soc (webhook) was disabled by John Doe <johndoe@example.com>.",
        ),
        (
            {"action": "disable_integration", "integration": SOC},
            "Integration disabled",
            "The integration soc (webhook) was disabled.",
        ),
        (
            {"action": "delete_integration", "integration": SOC},
            "Integration deleted",
            "The integration soc (webhook) was deleted.",
        ),
        (
            {"action": "integration_broken", "integration": SOC},
            "Integration is not working",
            "The integration soc (webhook) is not working.",
        ),
    ],
)
def test_every_system_action_has_its_summary_and_sentence(
    native: NativeFormat, fields: dict[str, Any], summary: str, description: str
) -> None:
    event = {"event": "system", "time": 1591261860, **fields}
    _, notification = convert(native, event)
    assert notification["summary"] == summary
    assert notification["description"] == description
    assert notification["notification_type"] == fields["action"]
    assert notification["details"] == {k: v for k, v in fields.items() if k != "action"}


def test_the_contract_scope_event(native: NativeFormat) -> None:
    assert convert(native, orjson.loads(SCOPE_LINE)) == (
        "scope",
        {
            "object_type": "scope",
            "notification_type": "new_scope_object_ips",
            "summary": "Network perimeter has changed",
            "description": "New IP addresses were discovered in the network perimeter: 8.8.8.8",
            "time": 1591261920,
            "details": {"change": "added", "kind": "ip", "values": ["8.8.8.8"]},
        },
    )


@pytest.mark.parametrize(
    ("change", "kind", "notification_type", "description"),
    [
        ("added", "host", "new_scope_object_hosts", "New hosts were discovered in the network perimeter: a.example.com, b.example.com"),  # noqa: E501
        ("removed", "ip", "removed_scope_object_ips", "IP addresses were removed from the network perimeter: a.example.com, b.example.com"),  # noqa: E501
        ("removed", "domain", "removed_scope_object_domains", "Domains were removed from the network perimeter: a.example.com, b.example.com"),  # noqa: E501
        ("changed", "service", "changed_scope_object_services", "Services were changed in the network perimeter: a.example.com, b.example.com"),  # noqa: E501
    ],
)  # fmt: skip
def test_scope_wording_for_other_kinds_and_changes(
    native: NativeFormat, change: str, kind: str, notification_type: str, description: str
) -> None:
    values = ["a.example.com", "b.example.com"]
    event = {"event": "scope", "time": 0, "change": change, "kind": kind, "values": values}
    _, notification = convert(native, event)
    assert notification["notification_type"] == notification_type
    assert notification["description"] == description


# --- every mapped object holds to its output schema ----------------------------------


def test_every_sample_line_maps_to_a_valid_notification(native: NativeFormat) -> None:
    lines = (DATA / "native" / "detections.jsonl").read_bytes().splitlines()
    assert len(lines) == 4
    for line in lines:
        event_type, notification = convert(native, orjson.loads(line))
        python_validator(f"notification-{event_type}").validate(notification)


def test_every_kind_of_system_and_scope_notification_is_valid(native: NativeFormat) -> None:
    system = python_validator("notification-system")
    for action in ("create_user", "update_user", "delete_user"):
        event = {"event": "system", "time": 1, "action": action, "actor": JOHN, "user": SMITH}
        system.validate(convert(native, event)[1])
    for action in ("disable_integration", "delete_integration", "integration_broken"):
        event = {"event": "system", "time": 1, "action": action, "integration": SOC}
        system.validate(convert(native, event)[1])
    scope = python_validator("notification-scope")
    for change in ("added", "removed", "changed"):
        for kind in ("ip", "host", "domain", "service"):
            event = {"event": "scope", "time": 1, "change": change, "kind": kind, "values": ["x"]}
            scope.validate(convert(native, event)[1])


rfc3339 = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda moment: moment.isoformat().replace("+00:00", "Z"))
point_element = st.one_of(st.text(min_size=1, max_size=8), st.integers(0, 99))
hits = st.fixed_dictionaries(
    {
        "event": st.just("hit"),
        "time": st.one_of(rfc3339, st.integers(0, 2**33), st.floats(0, 2e9)),
        "logged_at": st.one_of(rfc3339, st.integers(0, 2**33)),
        "ids": st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3),
        "domain": st.text(max_size=30),
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        "path": st.text(max_size=30),
        "point": st.tuples(st.sampled_from(["get", "post", "header", "uri", "path"])).flatmap(
            lambda head: st.lists(point_element, max_size=4).map(lambda rest: [*head, *rest])
        ),
        "payloads": st.lists(st.text(max_size=20), max_size=3),
        "attack_type": st.sampled_from(["sqli", "xss", "rce", "ptrav", "scanner", "vpatch"]),
        "block_status": st.sampled_from(["blocked", "monitored", "passed"]),
        "client": st.fixed_dictionaries(
            {
                "addr": st.ip_addresses().map(str),
                "port": st.integers(0, 65535),
                "country": st.one_of(st.none(), st.sampled_from(["PL", "US", "DE"])),
                "datacenter": st.sampled_from(["unknown", "aws", "gce"]),
                "tor": st.sampled_from(["none", "exit"]),
            }
        ),
        "response": st.fixed_dictionaries(
            {
                "status": st.integers(0, 999),
                "length": st.integers(0, 2**40),
                "time_ms": st.integers(0, 10**6),
            }
        ),
        "detection": st.fixed_dictionaries(
            {
                "anomality": st.floats(allow_nan=False, allow_infinity=False),
                "heur_distance": st.floats(0, 1000),
                "probability": st.floats(0, 1000),
                "stamps": st.lists(st.integers(0, 2**31), max_size=5),
                "regex": st.lists(st.integers(0, 2**31), max_size=3),
            }
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(event=hits)
def test_generated_hits_map_to_valid_notifications(event: dict[str, Any]) -> None:
    event_type, notification = convert(shared_native(), copy.deepcopy(event))
    assert event_type == "hit"
    python_validator("notification-hit").validate(notification)
    assert notification["parameter"] == parameter_from_point(event["point"])
    assert notification["stamps_hash"] == list_hash(event["detection"]["stamps"])
    assert (notification["remote_addr4"] is None) != (notification["remote_addr6"] is None)


# --- rejections ----------------------------------------------------------------------


@pytest.mark.parametrize("line", [[], [HIT_LINE], "hit", 42, 4.5, None, True])
def test_json_that_is_not_an_object_is_invalid_schema(native: NativeFormat, line: Any) -> None:
    with pytest.raises(RejectedLine) as caught:
        native.convert(line, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("invalid_schema", "unknown")


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        ({"time": 1}, "no 'event'"),
        ({"event": 42}, "not a string"),
        ({"event": None}, "not a string"),
        ({"event": ["hit"]}, "not a string"),
        ({"event": "foo"}, "unknown event 'foo'"),
        ({"event": "HIT"}, "unknown event 'HIT'"),
    ],
)
def test_a_missing_or_unknown_event_is_unknown_event(
    native: NativeFormat, event: dict[str, Any], detail: str
) -> None:
    with pytest.raises(RejectedLine) as caught:
        native.convert(event, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("unknown_event", "unknown")
    assert detail in caught.value.detail


def without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    target = changed
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return changed


def replaced(event: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (without(hit_event(), "ids"), '/: "ids" is a required property'),
        (without(hit_event(), "client", "port"), '/client: "port" is a required property'),
        (replaced(hit_event(), "41616", "client", "port"), "/client/port: "),
        (replaced(hit_event(), 70000, "client", "port"), "/client/port: "),
        (replaced(hit_event(), "yesterday", "time"), "/time: "),
        (replaced(hit_event(), -1, "time"), "/time: "),
        (replaced(hit_event(), "blocked!", "block_status"), "/block_status: "),
        (replaced(hit_event(), [], "point"), "/point: "),
        (replaced(hit_event(), ["1173"], "detection", "stamps"), "/detection/stamps/0: "),
        (replaced(hit_event(), 2**31, "detection", "stamps_hash"), "/detection/stamps_hash: "),
        (replaced(hit_event(), "111.17.1.300", "client", "addr"), "/client/addr: "),
        (replaced(hit_event(), "2020-02-30T00:00:00Z", "time"), "/time: "),
        (replaced(hit_event(), "2020-06-04T09:02:47Z\n", "logged_at"), "/logged_at: "),
        (replaced(hit_event(), [1, 2**64], "detection", "stamps"), "/detection/stamps: "),
        (replaced(hit_event(), [float(2**70)], "detection", "regex"), "/detection/regex: "),
        (replaced(hit_event(), 2**64, "response", "length"), "/response/length: "),
        (replaced(hit_event(), 1e20, "response", "time_ms"), "/response/time_ms: "),
    ],
)
def test_an_invalid_hit_is_invalid_schema_with_the_first_error(
    native: NativeFormat, event: dict[str, Any], detail: str
) -> None:
    with pytest.raises(RejectedLine) as caught:
        native.convert(event, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("invalid_schema", "hit")
    assert caught.value.detail.startswith(detail), caught.value.detail


@pytest.mark.parametrize(
    "event",
    [
        {"event": "system", "time": 1, "action": "create_user", "actor": JOHN},
        {"event": "system", "time": 1, "action": "create_user", "actor": JOHN, "user": JOHN},
        {"event": "system", "time": 1, "action": "delete_user", "actor": JOHN, "integration": SOC},
        {"event": "system", "time": 1, "action": "integration_broken", "user": SMITH},
        {"event": "system", "time": 1, "action": "reboot", "actor": JOHN},
        {"event": "system", "time": 1, "action": "delete_user", "actor": JOHN, "user": SMITH,
         "x": 1},
        {"event": "scope", "time": 1, "change": "added", "kind": "ips", "values": ["8.8.8.8"]},
        {"event": "scope", "time": 1, "change": "added", "kind": "ip", "values": []},
        {"event": "vulnerability", "time": 1, "id": "282157", "title": "t", "target": "t",
         "vuln_type": "Info", "domain": "d", "threat": "Low"},
        {"event": "vulnerability", "time": 1, "id": 1, "title": "t", "target": "t",
         "vuln_type": "Info", "domain": "d", "threat": "Severe"},
    ],
)  # fmt: skip
def test_invalid_other_events_are_invalid_schema(
    native: NativeFormat, event: dict[str, Any]
) -> None:
    with pytest.raises(RejectedLine) as caught:
        native.convert(event, CTX)
    assert (caught.value.reason, caught.value.event_type) == ("invalid_schema", event["event"])


def test_a_long_detail_is_cut(native: NativeFormat) -> None:
    event = replaced(hit_event(), "x" * 10_000, "time")
    with pytest.raises(RejectedLine) as caught:
        native.convert(event, CTX)
    assert len(caught.value.detail) <= 300
