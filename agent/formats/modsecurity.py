"""The ModSecurity format: libmodsecurity 3 / Coraza JSON audit log lines -> hit notifications.

Owns validation against ``modsecurity.schema.json`` and the mapping of one transaction to
one hit notification with the same fields as a native hit. Every line is a ``hit``
candidate, so every rejection is labelled ``hit``; a transaction without rule messages is
valid and sends nothing. The choices, where the audit log has no exact equivalent:

- ``type``: each rule message votes by CRS rule id range (``CRS_TYPES``), or for a rule
  outside the CRS by its ``attack-*`` tag (``TAG_TYPES``); the type with most votes wins,
  a tie goes to the type voted first. No vote at all (a custom rule without a known tag)
  gives ``vpatch``, Wallarm's type for a custom rule. Evaluation rules (949, 959, 980)
  do not vote.
- ``point`` and ``payloads``: from the first message of the winning type whose ``data``
  reads ``... found within VARIABLE: value`` (else whose ``match`` reads ``against
  variable `VARIABLE' (Value: `value' )``); ``payloads`` are the distinct values logged for
  that variable, a value that is a truncated prefix of another left out. Variables map as
  ``ARGS:x`` -> ``["get", x]`` when x is a query string argument or the method is GET or
  HEAD, else ``["post", x]``; ``ARGS_GET``/``ARGS_POST`` and their ``_NAMES`` likewise;
  ``REQUEST_HEADERS:Name`` -> ``["header", "NAME"]``; ``REQUEST_COOKIES:x`` ->
  ``["header", "COOKIE", "cookie", x]`` (Wallarm's cookie point); ``FILES:x`` ->
  ``["post", x]``; ``REQUEST_BODY`` and ``XML`` -> ``["post"]``; ``REQUEST_FILENAME`` and
  ``REQUEST_BASENAME`` -> ``["path"]``; anything else, or no parsable message, -> ``["uri"]``.
- ``domain``: the Host header without its port, lower-cased (else Coraza's
  ``request.hostname``, else ``host_ip``); ``path``: the uri without query string.
- ``block_status``: ``monitored`` unless the engine is ``Enabled``; then Coraza's
  ``is_interrupted`` decides when present, else ``blocked`` if the response status is 403
  or a blocking evaluation rule (949xxx, 959xxx) fired.
- ``request_time`` and ``create_time``: ``time_stamp`` is asctime(3) in the node's local
  time without a zone; it is read as UTC.
- ``probability`` and ``heur_distance``: the inbound anomaly score (``Total Score: N`` of
  rule 949110) as a float, 0.0 without one; ``anomality`` is 0.0 (no equivalent).
- ``stamps``: the distinct rule ids in order; ``regex`` is empty; ``response_len`` is the
  response's Content-Length or 0; ``response_time`` is 0 (not logged); ``id`` is
  ``[unique_id]``; ``datacenter`` ``unknown``, ``tor`` ``none``, ``remote_country`` null.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from agent.errors import RejectedLine
from agent.formats import MappingContext
from agent.formats.native import (
    MAX_DETAIL,
    InvalidValue,
    client_addresses,
    first_schema_error,
    list_hash,
    parameter_from_point,
)
from agent.schemas import fast_validator

Transaction = dict[str, Any]

#: CRS rule files (rule id // 1000) -> Wallarm attack type.
CRS_TYPES = {
    911: "protocol",  # method enforcement
    912: "dos",
    913: "scanner",
    920: "protocol",  # protocol enforcement
    921: "protocol",  # protocol attack: smuggling, response splitting
    930: "ptrav",  # local file inclusion, path traversal
    931: "rfi",
    932: "rce",
    933: "rce",  # PHP injection: Wallarm has no PHP type, code injection is rce
    934: "rce",  # Node.js and generic injection
    941: "xss",
    942: "sqli",
    943: "session_fixation",
    944: "rce",  # Java injection, Log4Shell
    950: "infoleak",
    951: "infoleak",
    952: "infoleak",
    953: "infoleak",
    954: "infoleak",
    955: "infoleak",  # web shells in responses
}

#: ``attack-*`` tags -> Wallarm attack type, for rules outside the CRS id ranges.
TAG_TYPES = {
    "attack-sqli": "sqli",
    "attack-xss": "xss",
    "attack-rce": "rce",
    "attack-lfi": "ptrav",
    "attack-rfi": "rfi",
    "attack-injection-php": "rce",
    "attack-injection-java": "rce",
    "attack-injection-generic": "rce",
    "attack-reputation-scanner": "scanner",
    "attack-protocol": "protocol",
    "attack-fixation": "session_fixation",
    "attack-dos": "dos",
    "attack-disclosure": "infoleak",
}

UNTYPED = "vpatch"

_BLOCKING_EVALUATION = (949, 959)
_FOUND_WITHIN = " found within "
_AGAINST_VARIABLE = "against variable `"
_COLLECTION = re.compile(r"[A-Z_]+")
_INBOUND_SCORE = re.compile(r"Inbound Anomaly Score Exceeded \(Total Score: ([0-9]+)\)")
_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What one rule message says: the rule, its attack type, and where it matched."""

    rule_id: int
    attack_type: str | None
    variable: tuple[str, str | None] | None  # (collection, key)
    value: str | None


def read_message(message: dict[str, Any]) -> RuleMatch:
    """One schema-valid rule message -> RuleMatch."""
    details = message["details"]
    rule_id = int(details["ruleId"])
    kind = attack_type(rule_id, details["tags"])
    found = found_within(details["data"]) or against_variable(details["match"])
    if found is None:
        return RuleMatch(rule_id, kind, None, None)
    return RuleMatch(rule_id, kind, found[0], found[1])


# The two parsers below run in linear time on any input (no backtracking regex): the
# logged values are the attacker's.
def found_within(data: str) -> tuple[tuple[str, str | None], str] | None:
    """``Matched Data: X found within ARGS:id: VALUE`` -> ``(("ARGS", "id"), VALUE)``."""
    at = data.find(_FOUND_WITHIN)
    while at != -1:
        start = at + len(_FOUND_WITHIN)
        collection = _COLLECTION.match(data, start)
        if collection and data.startswith(":", collection.end()):
            variable, separator, value = data[start:].partition(": ")
            return (split_variable(variable), value) if separator else None
        at = data.find(_FOUND_WITHIN, start)
    return None


def against_variable(match: str) -> tuple[tuple[str, str | None], str] | None:
    """``... against variable `REQUEST_HEADERS:x' (Value: `VALUE' )`` -> ``((...), VALUE)``."""
    at = match.find(_AGAINST_VARIABLE)
    if at == -1 or not match.endswith("' )"):
        return None
    inner = match[at + len(_AGAINST_VARIABLE) : -len("' )")]
    variable, separator, value = inner.partition("' (Value: `")
    if not separator or not _COLLECTION.fullmatch(variable.partition(":")[0]):
        return None
    return split_variable(variable), value


def split_variable(variable: str) -> tuple[str, str | None]:
    """``ARGS:id`` -> ``("ARGS", "id")``; ``REQUEST_URI`` -> ``("REQUEST_URI", None)``."""
    collection, colon, key = variable.partition(":")
    return collection, key if colon else None


def attack_type(rule_id: int, tags: list[str]) -> str | None:
    """The Wallarm type one rule votes for, or None (evaluation and setup rules)."""
    if 900000 <= rule_id <= 999999:
        return CRS_TYPES.get(rule_id // 1000)
    for tag in tags:
        found = TAG_TYPES.get(tag)
        if found is not None:
            return found
    return None


def winning_type(matches: list[RuleMatch]) -> str:
    """The most voted type; a tie goes to the type voted first (Counter keeps that order)."""
    votes = Counter(match.attack_type for match in matches if match.attack_type is not None)
    if not votes:
        return UNTYPED
    return votes.most_common(1)[0][0]


def point_for(collection: str, key: str | None, method: str, query_names: set[str]) -> list[str]:
    """A ModSecurity variable -> a Wallarm point (rules in the module docstring)."""
    if key is not None:
        if collection in ("ARGS", "ARGS_NAMES"):
            in_query = key in query_names or method in ("GET", "HEAD")
            return ["get" if in_query else "post", key]
        if collection in ("ARGS_GET", "ARGS_GET_NAMES"):
            return ["get", key]
        if collection in ("ARGS_POST", "ARGS_POST_NAMES", "FILES", "FILES_NAMES"):
            return ["post", key]
        if collection in ("REQUEST_HEADERS", "REQUEST_HEADERS_NAMES"):
            return ["header", key.upper()]
        if collection in ("REQUEST_COOKIES", "REQUEST_COOKIES_NAMES"):
            return ["header", "COOKIE", "cookie", key]
    if collection in ("REQUEST_BODY", "XML"):
        return ["post"]
    if collection in ("REQUEST_FILENAME", "REQUEST_BASENAME"):
        return ["path"]
    return ["uri"]


def distinct_payloads(values: list[str]) -> list[str]:
    """Distinct values in order, leaving out one that is a truncated prefix of another."""
    unique = list(dict.fromkeys(values))
    return [v for v in unique if not any(w != v and w.startswith(v) for w in unique)]


def locate(
    matches: list[RuleMatch], kind: str, request: dict[str, Any]
) -> tuple[list[Any], list[str]]:
    """``(point, payloads)`` from the first located message of the winning type."""
    located = [match for match in matches if match.variable is not None]
    chosen = next((m for m in located if m.attack_type == kind), located[0] if located else None)
    if chosen is None or chosen.variable is None:
        return ["uri"], []
    uri: str = request["uri"]
    query_names = {name for name, _ in parse_qsl(uri.partition("?")[2], keep_blank_values=True)}
    point = point_for(*chosen.variable, request["method"], query_names)
    values = [m.value for m in located if m.variable == chosen.variable and m.value is not None]
    return point, distinct_payloads(values)


def header(headers: dict[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name."""
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def host_without_port(host: str) -> str:
    """``shop.example.com:8080`` -> ``shop.example.com``; ``[::1]:80`` -> ``::1``."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name.lower()
    return host.lower()


def request_path(uri: str) -> str:
    """The path of a request target: no query string or fragment, no absolute-form origin."""
    path = uri.partition("?")[0].partition("#")[0]
    if path.startswith(("http://", "https://")):
        return "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    return path


def request_domain(transaction: Transaction) -> str:
    """The Host header without its port; else Coraza's hostname; else the server address."""
    request = transaction["request"]
    headers = request.get("headers", {})
    host = header(headers, "host") or header(headers, ":authority")
    if host:
        return host_without_port(host)
    return str(request.get("hostname") or transaction["host_ip"])


def asctime_seconds(stamp: str) -> int:
    """``Sat Nov 28 12:13:53 2026`` read as UTC -> Unix seconds."""
    try:
        _, month, day, clock, year = stamp.split()
        hour, minute, second = clock.split(":")
        moment = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
        if not (1 <= moment[2] <= calendar.monthrange(moment[0], moment[1])[1]):
            raise ValueError("day out of range")
        if moment[3] > 23 or moment[4] > 59 or moment[5] > 60:
            raise ValueError("time out of range")
    except (KeyError, ValueError) as exc:
        raise InvalidValue(f"/transaction/time_stamp: {stamp!r} is not a valid date") from exc
    return calendar.timegm(moment)


def block_status(transaction: Transaction, matches: list[RuleMatch]) -> str:
    """``blocked`` or ``monitored`` (rule in the module docstring)."""
    if transaction.get("producer", {}).get("secrules_engine") != "Enabled":
        return "monitored"
    if "is_interrupted" in transaction:
        return "blocked" if transaction["is_interrupted"] else "monitored"
    if transaction["response"]["http_code"] == 403:
        return "blocked"
    blocking = any(m.rule_id // 1000 in _BLOCKING_EVALUATION for m in matches)
    return "blocked" if blocking else "monitored"


def inbound_score(messages: list[dict[str, Any]]) -> float:
    """The CRS inbound anomaly score logged by rule 949110, or 0.0."""
    for message in messages:
        found = _INBOUND_SCORE.search(message["message"])
        if found:
            return float(found.group(1))
    return 0.0


def response_length(response: dict[str, Any]) -> int:
    length = header(response.get("headers", {}), "content-length")
    return int(length) if length is not None and length.strip().isdigit() else 0


def client_fields(transaction: Transaction) -> tuple[str | None, str | None]:
    """``(remote_addr4, remote_addr6)``; both None when client_ip is not an IP (a unix socket)."""
    try:
        return client_addresses(transaction["client_ip"])
    except ValueError:
        return None, None


def map_transaction(transaction: Transaction) -> dict[str, Any] | None:
    """One schema-valid transaction -> a hit notification, or None without rule messages."""
    messages = transaction.get("messages") or []
    if not messages:
        return None
    request = transaction["request"]
    matches = [read_message(message) for message in messages]
    kind = winning_type(matches)
    point, payloads = locate(matches, kind, request)
    stamps = list(dict.fromkeys(match.rule_id for match in matches))
    score = inbound_score(messages)
    seconds = asctime_seconds(transaction["time_stamp"])
    addr4, addr6 = client_fields(transaction)
    return {
        "anomality": 0.0,
        "domain": request_domain(transaction),
        "heur_distance": score,
        "method": request["method"],
        "parameter": parameter_from_point(point),
        "path": request_path(request["uri"]),
        "payloads": payloads,
        "point": point,
        "probability": score,
        "remote_country": None,
        "remote_port": int(transaction["client_port"]),
        "remote_addr4": addr4,
        "remote_addr6": addr6,
        "datacenter": "unknown",
        "tor": "none",
        "request_time": seconds,
        "create_time": seconds,
        "response_len": response_length(transaction["response"]),
        "response_status": int(transaction["response"]["http_code"]),
        "response_time": 0,
        "stamps": stamps,
        "regex": [],
        "stamps_hash": list_hash(stamps),
        "regex_hash": list_hash([]),
        "type": kind,
        "block_status": block_status(transaction, matches),
        "id": [transaction["unique_id"]],
        "object_type": "hit",
    }


class ModSecurityFormat:
    """Validates one audit log transaction line and maps it to a hit notification."""

    name = "modsecurity"

    def __init__(self) -> None:
        self._validator = fast_validator("modsecurity")

    def convert(self, obj: Any, ctx: MappingContext) -> tuple[str, dict[str, Any] | None]:
        """One decoded line -> ``("hit", notification or None)``; raises RejectedLine."""
        if not isinstance(obj, dict):
            raise RejectedLine("invalid_schema", "the line is not a JSON object", "hit")
        if not self._validator.is_valid(obj):
            raise RejectedLine("invalid_schema", first_schema_error(self._validator, obj), "hit")
        try:
            return "hit", map_transaction(obj["transaction"])
        except InvalidValue as exc:
            raise RejectedLine("invalid_schema", str(exc)[:MAX_DETAIL], "hit") from exc
