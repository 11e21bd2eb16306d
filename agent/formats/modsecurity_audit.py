"""Reading one ModSecurity JSON audit log entry, in either of its two layouts, as an `AuditEntry`.

ModSecurity writes ``SecAuditLogFormat JSON`` in two layouts, told apart by the schema
(``modsecurity.schema.json``) and here by ``transaction.transaction_id``:

- **v3** (libmodsecurity 3, nginx's and Coraza's connectors): everything under
  ``transaction``; each rule message is an object whose ``details`` carry ``ruleId``,
  ``data``, ``match`` and ``tags``; ``time_stamp`` is asctime(3) without a zone.
- **v2** (ModSecurity 2.9, Apache's ``mod_security2``): one key per audit log part:
  ``transaction`` (part A: ``time``, ``transaction_id``, ``remote_address``...),
  ``request`` (B: ``request_line``, ``headers``), ``response`` (F: ``status``,
  ``headers``), ``audit_data`` (H: ``messages`` as the error log's strings,
  ``engine_mode``, ``action.intercepted``). A message string is the operator's text
  followed by ``[key "value"]`` metadata; ModSecurity escapes every ``"`` in a value
  (``\\"``, or ``\\x22`` in ``data``), so the real metadata starts at the last
  `` [file "`` and an attacker's value cannot forge it. ``data`` is cut at 512 escaped
  characters ending in ``...``; the cut value is kept without the ellipsis.

Everything here runs in linear time on any input: the logged values are the attacker's.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agent.formats.native import InvalidValue

_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
_APACHE_TIME = re.compile(
    r"([0-9]{2})/([A-Z][a-z]{2})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.[0-9]{1,9})? ([+-])([0-9]{2})([0-9]{2})"
)
_V2_ESCAPE = re.compile(rb'\\(x[0-9A-Fa-f]{2}|["\\bfnrtv])')
_V2_SIMPLE = {b'"': b'"', b"\\": b"\\", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r"}
_V2_SIMPLE |= {b"t": b"\t", b"v": b"\v"}
_V2_DATA_CUT = 512  # escaped characters of a cut [data "..."] value, "..." included
_PARTIAL_ESCAPE = re.compile(r"\\(?:x[0-9A-Fa-f]?)?\Z")
_V2_VALUE = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)  # up to the first unescaped quote


@dataclass(frozen=True, slots=True)
class RuleMessage:
    """One rule's message: its id, ``msg``, logged ``data``, operator text and tags."""

    rule_id: int
    text: str  # msg: "SQL Injection Attack Detected via libinjection"
    data: str  # logdata: "Matched Data: s&1c found within ARGS:id: 'or 1=1--"
    match: str  # what the operator matched: v3 "... against variable `X' (Value: `v' )"
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One transaction with at least one rule message, whichever layout it came in."""

    unique_id: str
    seconds: int  # when the request came in, Unix seconds
    client_ip: str
    client_port: int
    server_ip: str
    method: str
    uri: str
    request_headers: dict[str, str]
    hostname: str | None  # Coraza's request.hostname
    status: int
    response_headers: dict[str, str]
    engine_enabled: bool  # SecRuleEngine On (not DetectionOnly)
    interrupted: bool | None  # whether the WAF stopped the request, when the log says
    messages: tuple[RuleMessage, ...]


def is_v2(line: dict[str, Any]) -> bool:
    """Whether a decoded line has ModSecurity 2's layout (the schema's discriminator)."""
    transaction = line.get("transaction")
    return isinstance(transaction, dict) and "transaction_id" in transaction


def read_entry(line: dict[str, Any]) -> AuditEntry | None:
    """A schema-valid line -> its entry, or None when it holds no rule message."""
    return read_v2(line) if is_v2(line) else read_v3(line["transaction"])


# --- libmodsecurity 3 ---------------------------------------------------------------


def read_v3(transaction: dict[str, Any]) -> AuditEntry | None:
    messages = transaction.get("messages") or []
    if not messages:
        return None
    request, response = transaction["request"], transaction["response"]
    interrupted = transaction.get("is_interrupted")
    return AuditEntry(
        unique_id=transaction["unique_id"],
        seconds=asctime_seconds(transaction["time_stamp"]),
        client_ip=transaction["client_ip"],
        client_port=int(transaction["client_port"]),
        server_ip=transaction["host_ip"],
        method=request["method"],
        uri=request["uri"],
        request_headers=request.get("headers", {}),
        hostname=request.get("hostname"),
        status=int(response["http_code"]),
        response_headers=response.get("headers", {}),
        engine_enabled=transaction.get("producer", {}).get("secrules_engine") == "Enabled",
        interrupted=interrupted if isinstance(interrupted, bool) else None,
        messages=tuple(read_v3_message(message) for message in messages),
    )


def read_v3_message(message: dict[str, Any]) -> RuleMessage:
    details = message["details"]
    return RuleMessage(
        rule_id=int(details["ruleId"]),
        text=message["message"],
        data=details["data"],
        match=details["match"],
        tags=tuple(details["tags"]),
    )


@lru_cache(maxsize=1024)  # the lines of one second share their stamp
def asctime_seconds(stamp: str) -> int:
    """``Sat Nov 28 12:13:53 2026`` read as UTC -> Unix seconds."""
    try:
        _, month, day, clock, year = stamp.split()
        hour, minute, second = clock.split(":")
        moment = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
        check_moment(moment)
    except (KeyError, ValueError) as exc:
        raise InvalidValue(f"/transaction/time_stamp: {stamp!r} is not a valid date") from exc
    return calendar.timegm(moment)


def check_moment(moment: tuple[int, int, int, int, int, int]) -> None:
    year, month, day, hour, minute, second = moment
    if not (1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError("day out of range")
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("time out of range")


# --- ModSecurity 2 ------------------------------------------------------------------


def read_v2(line: dict[str, Any]) -> AuditEntry | None:
    audit = line.get("audit_data", {})
    texts: list[str] = audit.get("messages") or []
    if not texts:
        return None
    transaction, request, response = line["transaction"], line["request"], line["response"]
    method, uri = split_request_line(request["request_line"])
    engine = audit.get("engine_mode")
    return AuditEntry(
        unique_id=transaction["transaction_id"],
        seconds=apache_time_seconds(transaction["time"]),
        client_ip=transaction["remote_address"],
        client_port=int(transaction["remote_port"]),
        server_ip=transaction["local_address"],
        method=method,
        uri=uri,
        request_headers=request.get("headers", {}),
        hostname=None,
        status=int(response["status"]),
        response_headers=response.get("headers", {}),
        # engine_mode came with 2.9.1; before it, an interception is the only sign
        engine_enabled=engine is None or engine == "ENABLED",
        interrupted=audit.get("action", {}).get("intercepted") is True,
        messages=tuple(
            read_v2_message(text, f"/audit_data/messages/{n}") for n, text in enumerate(texts)
        ),
    )


def split_request_line(line: str) -> tuple[str, str]:
    """``GET /a?b=1 HTTP/1.1`` -> ``("GET", "/a?b=1")``; an HTTP/0.9 line has no protocol."""
    method, space, rest = line.partition(" ")
    if not method or not space or not rest:
        raise InvalidValue(f"/request/request_line: {line[:80]!r} is not a request line")
    target, space, protocol = rest.rpartition(" ")
    return method, target if space and protocol.startswith("HTTP/") else rest


def apache_time_seconds(stamp: str) -> int:
    """``29/Nov/2026:05:46:52.636451 +0000`` -> Unix seconds."""
    found = _APACHE_TIME.fullmatch(stamp)
    try:
        if found is None:
            raise ValueError("not DD/Mon/YYYY:HH:MM:SS +ZZZZ")
        day, month, year, hour, minute, second, sign, zone_h, zone_m = found.groups()
        moment = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
        check_moment(moment)
    except (KeyError, ValueError) as exc:
        raise InvalidValue(f"/transaction/time: {stamp!r} is not a valid date") from exc
    offset = (int(zone_h) * 60 + int(zone_m)) * 60 * (-1 if sign == "-" else 1)
    return calendar.timegm(moment) - offset


def read_v2_message(text: str, where: str) -> RuleMessage:
    """One ``audit_data.messages`` string -> RuleMessage; InvalidValue without a rule id."""
    start = text.rfind(' [file "')
    if start == -1:
        start = text.rfind(' [id "')
    fields = v2_metadata(text, start + 1) if start != -1 else {}
    rule_id = fields.get("id", [""])[0]
    if not (rule_id.isascii() and rule_id.isdigit() and len(rule_id) <= 18):
        raise InvalidValue(f"{where}: the message names no rule id")
    data = fields.get("data", [""])[0]
    cut = len(data) == _V2_DATA_CUT and data.endswith("...")
    if cut:
        data = _PARTIAL_ESCAPE.sub("", data[:-3])
    return RuleMessage(
        rule_id=int(rule_id),
        text=v2_unescape(fields.get("msg", [""])[0]),
        data=v2_unescape(data),
        match=text[:start],
        tags=tuple(v2_unescape(tag) for tag in fields.get("tag", [])),
    )


def v2_metadata(text: str, at: int) -> dict[str, list[str]]:
    """``[key "value"] [key "value"]...`` from ``at`` on -> raw (escaped) values by key."""
    fields: dict[str, list[str]] = {}
    while text.startswith("[", at):
        key_end = text.find(' "', at)
        key = text[at + 1 : key_end]
        if key_end == -1 or not (key.isascii() and key.isalpha()):
            break
        value = _V2_VALUE.match(text, key_end + 2)
        value_end = value.end() if value is not None else key_end + 2
        if not text.startswith('"]', value_end):
            break
        fields.setdefault(key, []).append(text[key_end + 2 : value_end])
        at = value_end + 3  # past '"] '
    return fields


def v2_unescape(value: str) -> str:
    """Undo ModSecurity 2's log escaping (``\\xHH``, ``\\"``, ``\\\\``, ``\\n``...)."""
    if "\\" not in value:
        return value
    raw = _V2_ESCAPE.sub(_v2_byte, value.encode("utf-8", "surrogatepass"))
    return raw.decode("utf-8", "replace")


def _v2_byte(found: re.Match[bytes]) -> bytes:
    escape = found.group(1)
    if escape[:1] == b"x":
        return bytes([int(escape[1:], 16)])
    return _V2_SIMPLE[escape]
