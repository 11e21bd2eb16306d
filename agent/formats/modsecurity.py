"""The ModSecurity format: JSON audit log lines -> hit notifications.

Owns validation against ``modsecurity.schema.json`` and the mapping of one transaction to
one hit notification with the same fields as a native hit. Both JSON layouts are read:
libmodsecurity 3's (nginx, Coraza) and ModSecurity 2's (Apache's ``mod_security2``);
`agent.formats.modsecurity_audit` reads either into one `AuditEntry`. Every line is a
``hit`` candidate, so every rejection is labelled ``hit``; a transaction without rule
messages is valid and sends nothing. The choices, where the audit log has no exact
equivalent:

- ``type``: each rule message votes by CRS rule id range (``CRS_TYPES``), or for a rule
  outside the CRS by its ``attack-*`` tag (``TAG_TYPES``); the type with most votes wins,
  a tie goes to the type voted first. No vote at all (a custom rule without a known tag)
  gives ``vpatch``, Wallarm's type for a custom rule. Evaluation and correlation rules
  (949, 959, 980) do not vote.
- ``point`` and ``payloads``: a message locates the attack when its ``data`` reads
  ``... found within VARIABLE: value`` (else, v3, its ``match`` reads ``against variable
  `VARIABLE' (Value: `value' )``; v2, ``... at VARIABLE.``, without the value). The
  chosen message is the first of the winning type that names a request part more exact
  than the whole URI (ModSecurity 2's CRS logs ``REQUEST_URI_RAW`` before ``ARGS:file``
  for a path traversal), else the first of the winning type, else the first located.
  ``payloads`` are the distinct values logged for its variable, a value that is a
  truncated prefix of another left out. A header's logged value that starts the header
  as the request sent it (part B), ignoring case, is that header: the CRS matches
  headers lower-cased, and libmodsecurity 3.0.9 may log a header's value cut short.
  Variables map as ``ARGS:x`` -> ``["get", x]`` when x is a query string argument or the
  method is GET or HEAD, else ``["post", x]``;
  ``ARGS_GET``/``ARGS_POST`` and their ``_NAMES`` likewise; ``REQUEST_HEADERS:Name`` ->
  ``["header", "NAME"]``; ``REQUEST_COOKIES:x`` -> ``["header", "COOKIE", "cookie", x]``
  (Wallarm's cookie point); ``FILES:x`` -> ``["post", x]``; ``REQUEST_BODY`` and ``XML``
  -> ``["post"]``; ``REQUEST_FILENAME`` and ``REQUEST_BASENAME`` -> ``["path"]``;
  anything else, or no located message, -> ``["uri"]``. A JSON body's field is
  ``ARGS:json.q`` in v3 and ``ARGS:q`` in v2: ``["post", "json.q"]`` and ``["post", "q"]``.
- ``domain``: the Host header without its port, lower-cased (else Coraza's
  ``request.hostname``, else the server address); ``path``: the uri without query string.
- ``block_status``: ``monitored`` unless the engine is on (v3 ``secrules_engine``
  ``Enabled``, v2 ``engine_mode`` ``ENABLED``); then whether the WAF interrupted the
  request decides where the log says (v2 ``audit_data.action.intercepted``, Coraza
  ``is_interrupted``), else ``blocked`` if the response status is 403 or a blocking
  evaluation rule (949xxx, 959xxx) fired.
- ``request_time`` and ``create_time``: v3's ``time_stamp`` is asctime(3) in the node's
  local time without a zone and is read as UTC; v2's ``time`` carries its zone.
- ``probability`` and ``heur_distance``: the inbound anomaly score (``Total Score: N`` of
  rule 949110) as a float, 0.0 without one; ``anomality`` is 0.0 (no equivalent).
- ``stamps``: the distinct rule ids in order; ``regex`` is empty; ``response_len`` is the
  response's Content-Length or 0; ``response_time`` is 0 (not logged); ``id`` is
  ``[unique_id]`` (v2: ``transaction_id``); ``datacenter`` ``unknown``, ``tor`` ``none``,
  ``remote_country`` null.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from agent.errors import RejectedLine
from agent.formats import MappingContext
from agent.formats.modsecurity_audit import AuditEntry, RuleMessage, read_entry
from agent.formats.native import (
    MAX_DETAIL,
    InvalidValue,
    client_addresses,
    first_schema_error,
    list_hash,
    parameter_from_point,
)
from agent.schemas import fast_validator

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
_AT_VARIABLE = " at "
_INBOUND_SCORE = re.compile(r"Inbound Anomaly Score Exceeded \(Total Score: ([0-9]+)\)")


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What one rule message says: the rule, its attack type, and where it matched."""

    rule_id: int
    attack_type: str | None
    variable: tuple[str, str | None] | None  # (collection, key)
    value: str | None


def read_message(message: RuleMessage) -> RuleMatch:
    """One rule message -> what it says about the attack."""
    kind = attack_type(message.rule_id, message.tags)
    found = found_within(message.data) or against_variable(message.match)
    if found is not None:
        return RuleMatch(message.rule_id, kind, found[0], found[1])
    return RuleMatch(message.rule_id, kind, at_variable(message.match), None)


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


def at_variable(match: str) -> tuple[str, str | None] | None:
    """ModSecurity 2's ``Pattern match "..." at ARGS:id.`` -> ``("ARGS", "id")``."""
    at = match.rfind(_AT_VARIABLE)
    if at == -1 or not match.endswith("."):
        return None
    variable = match[at + len(_AT_VARIABLE) : -1]
    if not _COLLECTION.fullmatch(variable.partition(":")[0]) or " " in variable:
        return None
    return split_variable(variable)


def split_variable(variable: str) -> tuple[str, str | None]:
    """``ARGS:id`` -> ``("ARGS", "id")``; ``REQUEST_URI`` -> ``("REQUEST_URI", None)``."""
    collection, colon, key = variable.partition(":")
    return collection, key if colon else None


def attack_type(rule_id: int, tags: tuple[str, ...]) -> str | None:
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


def locate(matches: list[RuleMatch], kind: str, entry: AuditEntry) -> tuple[list[Any], list[str]]:
    """``(point, payloads)`` from the chosen message (rule in the module docstring)."""
    query = entry.uri.partition("?")[2]
    query_names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    points = [
        (match, point_for(*match.variable, entry.method, query_names))
        for match in matches
        if match.variable is not None
    ]
    if not points:
        return ["uri"], []
    ranked = sorted(points, key=lambda pair: (pair[0].attack_type != kind, pair[1] == ["uri"]))
    chosen, point = ranked[0]  # sorted() is stable: the first of its rank
    values = [m.value for m, _ in points if m.variable == chosen.variable and m.value is not None]
    if point[0] == "header" and len(point) == 2:
        values = as_sent(values, header(entry.request_headers, point[1].lower()))
    return point, distinct_payloads(values)


def as_sent(values: list[str], sent: str | None) -> list[str]:
    """A header's logged values, each that starts it (ignoring case) replaced by ``sent``."""
    if sent is None:
        return values
    folded = sent.casefold()
    return [sent if folded.startswith(value.casefold()) else value for value in values]


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


def request_domain(entry: AuditEntry) -> str:
    """The Host header without its port; else Coraza's hostname; else the server address."""
    headers = entry.request_headers
    host = header(headers, "host") or header(headers, ":authority")
    if host:
        return host_without_port(host)
    return entry.hostname or entry.server_ip


def block_status(entry: AuditEntry, matches: list[RuleMatch]) -> str:
    """``blocked`` or ``monitored`` (rule in the module docstring)."""
    if not entry.engine_enabled:
        return "monitored"
    if entry.interrupted is not None:
        return "blocked" if entry.interrupted else "monitored"
    if entry.status == 403:
        return "blocked"
    blocking = any(m.rule_id // 1000 in _BLOCKING_EVALUATION for m in matches)
    return "blocked" if blocking else "monitored"


def inbound_score(messages: tuple[RuleMessage, ...]) -> float:
    """The CRS inbound anomaly score logged by rule 949110, or 0.0."""
    for message in messages:
        found = _INBOUND_SCORE.search(message.text)
        if found:
            return float(found.group(1))
    return 0.0


def response_length(headers: dict[str, str]) -> int:
    length = header(headers, "content-length")
    return int(length) if length is not None and length.strip().isdigit() else 0


def client_fields(client_ip: str) -> tuple[str | None, str | None]:
    """``(remote_addr4, remote_addr6)``; both None when client_ip is not an IP (a unix socket)."""
    try:
        return client_addresses(client_ip)
    except ValueError:
        return None, None


def map_entry(entry: AuditEntry) -> dict[str, Any]:
    """One audit log entry with rule messages -> a hit notification."""
    matches = [read_message(message) for message in entry.messages]
    kind = winning_type(matches)
    point, payloads = locate(matches, kind, entry)
    stamps = list(dict.fromkeys(match.rule_id for match in matches))
    score = inbound_score(entry.messages)
    addr4, addr6 = client_fields(entry.client_ip)
    return {
        "anomality": 0.0,
        "domain": request_domain(entry),
        "heur_distance": score,
        "method": entry.method,
        "parameter": parameter_from_point(point),
        "path": request_path(entry.uri),
        "payloads": payloads,
        "point": point,
        "probability": score,
        "remote_country": None,
        "remote_port": entry.client_port,
        "remote_addr4": addr4,
        "remote_addr6": addr6,
        "datacenter": "unknown",
        "tor": "none",
        "request_time": entry.seconds,
        "create_time": entry.seconds,
        "response_len": response_length(entry.response_headers),
        "response_status": entry.status,
        "response_time": 0,
        "stamps": stamps,
        "regex": [],
        "stamps_hash": list_hash(stamps),
        "regex_hash": list_hash([]),
        "type": kind,
        "block_status": block_status(entry, matches),
        "id": [entry.unique_id],
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
            entry = read_entry(obj)
        except InvalidValue as exc:
            raise RejectedLine("invalid_schema", str(exc)[:MAX_DETAIL], "hit") from exc
        return "hit", None if entry is None else map_entry(entry)

    def fast_hit(self, line: bytes) -> None:
        """No fast path: every transaction takes ``convert``."""
        return None
