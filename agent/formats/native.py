"""The native format: tailhook's own detection lines (CONTRACT §4) and their notifications (§5).

Owns the choice of schema by ``event``, validation on the hot path, one mapping function
per event type, and the pieces of a hit notification that the ModSecurity format reuses:

- ``parameter_from_point``: the point's first element upper-cased, the other elements as
  they are, all joined with ``_``, then ``_value`` (``["get", "id"]`` -> ``GET_id_value``,
  ``["header", "USER-AGENT"]`` -> ``HEADER_USER-AGENT_value``, ``["uri"]`` -> ``URI_value``).
- ``list_hash``: the signed 32-bit CRC-32 of the comma-joined decimal list, -2147483648
  for an empty list (``stamps_hash``, ``regex_hash``).
- ``client_addresses``: ``(remote_addr4, remote_addr6)`` by IP version; an IPv4-mapped
  IPv6 address (``::ffff:1.2.3.4``) counts as IPv4.
- ``unix_seconds``: RFC 3339 or Unix seconds to whole Unix seconds (fractions dropped).

A value the schema lets through but the mapping cannot use (an address that is not an IP,
2020-02-30, an integer beyond the 64 bits a notification can carry) rejects the line as
``invalid_schema`` too.
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from agent.errors import RejectedLine
from agent.formats import EVENT_TYPES, MappingContext
from agent.schemas import fast_validator

Event = dict[str, Any]

#: The error detail of a rejected line is cut to this many characters.
MAX_DETAIL = 300
#: The longest string the mapping's caches keep as a key: a line's values are its
#: writer's to choose, and thousands of cached ones must hold little memory.
MAX_CACHED_KEY = 64


class InvalidValue(Exception):
    """A value that passed the schema but cannot be mapped; the message says where and why."""


def first_schema_error(validator: Any, obj: Any) -> str:
    """The first schema error as ``/json/pointer: message``, for a line known to be invalid."""
    for error in validator.iter_errors(obj):
        pointer = "/" + "/".join(str(part) for part in error.instance_path)
        detail = f"{pointer}: {error.message}"
        return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."
    return "invalid against its schema"


def unix_seconds(value: Any, where: str) -> int:
    """Whole Unix seconds from an RFC 3339 string (schema-checked) or a number."""
    if isinstance(value, str):
        parse = _rfc3339_seconds if len(value) <= MAX_CACHED_KEY else _parse_rfc3339
        try:
            return parse(value)
        except ValueError as exc:
            raise InvalidValue(f"{where}: {value!r} is not a valid date-time ({exc})") from exc
    return int(value)


def _parse_rfc3339(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:  # RFC 3339 allows a lower-case "t" and "z", fromisoformat does not
        moment = datetime.fromisoformat(value.upper())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


# Cached: the lines of one second share their time strings.
_rfc3339_seconds = lru_cache(maxsize=1024)(_parse_rfc3339)


_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


def client_addresses(addr: str) -> tuple[str | None, str | None]:
    """``(remote_addr4, remote_addr6)`` for a client address; raises ValueError if not an IP.

    An address without ``:`` is IPv4 when glibc's ``inet_pton`` reads it: exactly the
    addresses ``ipaddress`` accepts and writes back unchanged (four decimal octets up to
    255, no leading zero), ~40x faster than ``ipaddress`` parses one
    (tests/test_fast_path.py holds the two to each other)."""
    if ":" not in addr:
        try:
            _inet_pton(_AF_INET, addr)
        except OSError:
            pass  # ipaddress decides (and raises)
        else:
            return addr, None
    if len(addr) > MAX_CACHED_KEY:  # an IPv6 address with a long scope id, or none
        return _other_addresses(addr)
    return _cached_other_addresses(addr)


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _other_addresses(addr: str) -> tuple[str | None, str | None]:
    if ":" in addr:
        try:
            packed = socket.inet_pton(socket.AF_INET6, addr)
        except (OSError, ValueError):
            pass  # ipaddress decides: a scope id (fe80::1%eth0), or not an address
        else:
            return _ipv6_addresses(packed)
    # With a ":" it cannot be IPv4: skip ip_address's IPv4 attempt and the exception it
    # raises (more than half of ip_address's time); the verdict and the result are the same.
    ip = ipaddress.IPv6Address(addr) if ":" in addr else ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return (str(mapped), None) if mapped is not None else (None, str(ip))
    return str(ip), None


_cached_other_addresses = lru_cache(maxsize=4096)(_other_addresses)


def _ipv6_addresses(packed: bytes) -> tuple[str | None, str | None]:
    """What ``ipaddress`` gives for an address glibc's ``inet_pton`` read (it reads a subset
    of what ``ipaddress`` reads, to the same value: tests/test_fast_path.py), ~10x faster.

    ``inet_ntop`` writes what ``str(IPv6Address)`` writes (the first longest run of two
    or more zero groups as ``::``, lower case) except where the first five groups are zero
    (it may write ``::1.2.3.4``, ``::0.0.0.2``): those go through ``ipaddress``.
    """
    if packed[:12] == _MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:]), None
    if packed[:10] == _MAPPED_PREFIX[:10]:
        return None, str(ipaddress.IPv6Address(packed))
    return None, socket.inet_ntop(socket.AF_INET6, packed)


def parameter_from_point(point: list[Any]) -> str:
    """Wallarm's ``parameter`` for a point (see the module docstring for the rule)."""
    head = str(point[0]).upper()
    if len(point) == 1:
        return head + "_value"
    return head + "_" + "_".join([str(part) for part in point[1:]]) + "_value"


def list_hash(values: list[int]) -> int:
    """Signed 32-bit CRC-32 of ``"1,2,3"``; -2147483648 for an empty list.

    ``"1,2,3"`` is the list as orjson writes it (``[1,2,3]``) without its brackets:
    twice as fast as joining ``str`` of each value."""
    if not values:
        return -2147483648
    crc = zlib.crc32(orjson.dumps(values)[1:-1])
    return crc - 0x100000000 if crc & 0x80000000 else crc


#: The largest integer a notification can carry: orjson writes integers up to 64 bits.
MAX_INTEGER = 2**64 - 1


def _integers(values: list[Any], where: str) -> list[int]:
    """Whole numbers the schema took (``1.0`` is one), as ints a notification can carry."""
    ints = [int(value) for value in values]
    if ints and max(ints) > MAX_INTEGER:
        raise InvalidValue(f"{where}: {max(ints)} is larger than {MAX_INTEGER}")
    return ints


def _client(addr: str) -> tuple[str | None, str | None]:
    try:
        return client_addresses(addr)
    except ValueError as exc:
        raise InvalidValue(f"/client/addr: {addr!r} is not an IP address") from exc


def map_hit(event: Event, ctx: MappingContext) -> Event:
    """A native hit -> the Wallarm hit notification (CONTRACT §5)."""
    client = event["client"]
    response = event["response"]
    detection = event["detection"]
    addr4, addr6 = _client(client["addr"])
    stamps = _integers(detection["stamps"], "/detection/stamps")
    regex = _integers(detection["regex"], "/detection/regex")
    (length,) = _integers([response["length"]], "/response/length")
    (time_ms,) = _integers([response["time_ms"]], "/response/time_ms")
    stamps_hash = detection.get("stamps_hash")
    regex_hash = detection.get("regex_hash")
    return {
        "anomality": detection["anomality"],
        "domain": event["domain"],
        "heur_distance": detection["heur_distance"],
        "method": event["method"],
        "parameter": parameter_from_point(event["point"]),
        "path": event["path"],
        "payloads": event["payloads"],
        "point": event["point"],
        "probability": detection["probability"],
        "remote_country": client["country"],
        "remote_port": int(client["port"]),
        "remote_addr4": addr4,
        "remote_addr6": addr6,
        "datacenter": client["datacenter"],
        "tor": client["tor"],
        "request_time": unix_seconds(event["time"], "/time"),
        "create_time": unix_seconds(event["logged_at"], "/logged_at"),
        "response_len": length,
        "response_status": int(response["status"]),
        "response_time": time_ms,
        "stamps": stamps,
        "regex": regex,
        "stamps_hash": list_hash(stamps) if stamps_hash is None else int(stamps_hash),
        "regex_hash": list_hash(regex) if regex_hash is None else int(regex_hash),
        "type": event["attack_type"],
        "block_status": event["block_status"],
        "id": event["ids"],
        "object_type": "hit",
    }


def map_vulnerability(event: Event, ctx: MappingContext) -> Event:
    """A native vulnerability -> its notification; the link points into the console."""
    unix_seconds(event["time"], "/time")  # not sent, but a line with an impossible date is bad
    return {
        "title": event["title"],
        "source": event["target"],
        "type": event["vuln_type"],
        "domain": event["domain"],
        "threat": event["threat"],
        "link": f"{ctx.console_url.rstrip('/')}/object/{int(event['id'])}",
        "summary": "New vulnerability identified",
        "object_type": "vulnerability",
    }


SYSTEM_SUMMARIES = {
    "create_user": "New user added",
    "update_user": "User updated",
    "delete_user": "User deleted",
    "disable_integration": "Integration disabled",
    "delete_integration": "Integration deleted",
    "integration_broken": "Integration is not working",
}

_SYSTEM_ENVELOPE = frozenset({"event", "time", "action"})


def _person(person: dict[str, str]) -> str:
    return f"{person['name']} <{person['email']}>"


def describe_system(event: Event) -> str:
    """One sentence naming who did what (CONTRACT §5)."""
    action = event["action"]
    if action in ("create_user", "update_user", "delete_user"):
        user, actor = event["user"], _person(event["actor"])
        if action == "create_user":
            return f"A new user {_person(user)} with the role {user['role']} was added by {actor}."
        if action == "update_user":
            return (
                f"The user {_person(user)} was updated by {actor}; the role is now {user['role']}."
            )
        return f"The user {_person(user)} was deleted by {actor}."
    integration = event["integration"]
    subject = f"The integration {integration['name']} ({integration['type']})"
    if action == "integration_broken":
        return f"{subject} is not working."
    verb = "disabled" if action == "disable_integration" else "deleted"
    by = f" by {_person(event['actor'])}" if "actor" in event else ""
    return f"{subject} was {verb}{by}."


def map_system(event: Event, ctx: MappingContext) -> Event:
    """A native system event -> its notification; ``details`` keeps actor, user, integration."""
    return {
        "object_type": "system",
        "notification_type": event["action"],
        "summary": SYSTEM_SUMMARIES[event["action"]],
        "description": describe_system(event),
        "time": unix_seconds(event["time"], "/time"),
        "details": {key: value for key, value in event.items() if key not in _SYSTEM_ENVELOPE},
    }


_SCOPE_NOUNS = {"ip": "IP addresses", "host": "hosts", "domain": "domains", "service": "services"}
_SCOPE_PREFIXES = {"added": "new", "removed": "removed", "changed": "changed"}


def describe_scope(change: str, kind: str, values: list[str]) -> str:
    """``New IP addresses were discovered in the network perimeter: 8.8.8.8`` and the like."""
    noun = _SCOPE_NOUNS[kind]
    capitalized = noun[0].upper() + noun[1:]
    if change == "added":
        lead = f"New {noun} were discovered in the network perimeter"
    elif change == "removed":
        lead = f"{capitalized} were removed from the network perimeter"
    else:
        lead = f"{capitalized} were changed in the network perimeter"
    return f"{lead}: {', '.join(values)}"


def map_scope(event: Event, ctx: MappingContext) -> Event:
    """A native scope change -> its notification (``new_scope_object_ips`` and the like)."""
    change, kind, values = event["change"], event["kind"], event["values"]
    return {
        "object_type": "scope",
        "notification_type": f"{_SCOPE_PREFIXES[change]}_scope_object_{kind}s",
        "summary": "Network perimeter has changed",
        "description": describe_scope(change, kind, values),
        "time": unix_seconds(event["time"], "/time"),
        "details": {"change": change, "kind": kind, "values": values},
    }


MAPPERS = {
    "hit": map_hit,
    "vulnerability": map_vulnerability,
    "system": map_system,
    "scope": map_scope,
}


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def _describe_unknown_event(obj: Event) -> str:
    if "event" not in obj:
        return "the line has no 'event' field"
    event = obj["event"]
    if not isinstance(event, str):
        return f"'event' is a JSON {_json_type(event)}, not a string"
    return f"unknown event {event!r}"[:MAX_DETAIL]


class NativeFormat:
    """Classifies a line by ``event``, validates it against its schema and maps it."""

    name = "native"

    def __init__(self) -> None:
        from agent.formats.native_fast import fast_hit  # it builds on this module

        self._validators = {event_type: fast_validator(event_type) for event_type in EVENT_TYPES}
        # The fast path itself, not a method calling it: one frame less per line.
        self.fast_hit = fast_hit

    def convert(self, obj: Any, ctx: MappingContext) -> tuple[str, Event | None]:
        """One decoded line -> ``(event_type, notification)``; raises RejectedLine."""
        if not isinstance(obj, dict):
            raise RejectedLine(
                "invalid_schema", f"the line is a JSON {_json_type(obj)}, not an object"
            )
        event = obj.get("event")
        if not isinstance(event, str) or event not in self._validators:
            raise RejectedLine("unknown_event", _describe_unknown_event(obj))
        validator = self._validators[event]
        if not validator.is_valid(obj):
            raise RejectedLine("invalid_schema", first_schema_error(validator, obj), event)
        try:
            return event, MAPPERS[event](obj, ctx)
        except InvalidValue as exc:
            raise RejectedLine("invalid_schema", str(exc)[:MAX_DETAIL], event) from exc
