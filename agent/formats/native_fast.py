"""The fast path for native hit lines: decode, validate and map in one typed pass.

``schemas/hit.schema.json`` stays the contract. ``HitLine`` below is a msgspec type that
accepts a strict *subset* of what that schema (and ``map_hit``) accepts, so a line it
takes is valid and is mapped to the very notification ``map_hit`` gives, as a
``HitNotification`` that msgspec encodes to the bytes orjson writes for ``map_hit``'s
dict (no dict is built, and the bytes go straight into the read's buffer); any other line
(not a hit, an unknown field, a value outside the subset, anything msgspec or the mapping
refuses) makes ``fast_hit`` answer ``None`` and the caller takes the exact path
(orjson, jsonschema_rs, ``map_hit``), which decides and explains the rejection as before.
``tests/test_fast_path.py`` holds the two paths to the same verdicts and bytes, and both
to the ``jsonschema`` library's verdicts on the shipped schema.

The subset, and why each narrowing keeps it exact:

- every object forbids unknown fields: a skipped value is not checked by msgspec the
  way orjson checks it (invalid UTF-8, ``1e400``), so a line with one goes the exact way;
- integers are int64 (``orjson`` reads a larger one as a float, which the schema's
  ``integer`` accepts and ``int()`` maps differently); ``1.0`` for an integer is refused;
- ``"number"`` fields are ``int | float``, so ``1`` stays ``1`` and ``1.0`` stays ``1.0``;
  a float is taken only below 1e16 in size: from there on msgspec writes ``1e16`` where
  orjson writes ``1e+16`` (the only way the two encoders differ on what a hit carries);
- ``point``'s first element being a non-empty string, ``client.addr`` being an address
  and a time string being a real date are checked by the mapping, as ``map_hit`` does;
- the patterns of ``time``, ``logged_at`` and ``attack_type`` (the schema's own) are
  searched by the mapping too, through caches: msgspec's check of a pattern costs ~1 µs
  a string, and the lines of one second share their times;
- a time with a fraction of a second is taken from 1970 to 2106 only (``seconds``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from agent.formats.native import (
    MAX_CACHED_KEY,
    InvalidValue,
    client_addresses,
    list_hash,
    parameter_from_point,
    unix_seconds,
)
from agent.schemas import load_schema

_HIT_SCHEMA = load_schema("hit")
#: The schema's own patterns, searched as ``jsonschema`` searches them.
_is_time = re.compile(_HIT_SCHEMA["$defs"]["time"]["pattern"]).search
_is_attack = re.compile(_HIT_SCHEMA["properties"]["attack_type"]["pattern"]).search
_MAX_TIME = 253402300799

Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
#: Floats msgspec and orjson write alike (the module docstring).
Float = Annotated[float, Meta(gt=-1e16, lt=1e16)]
Number = Int64 | Float
# A time string's pattern is searched by ``seconds``, cached (the module docstring).
Time = str | Annotated[int, Meta(ge=0, le=_MAX_TIME)] | Annotated[float, Meta(ge=0, le=_MAX_TIME)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
NonEmpty = Annotated[str, Meta(min_length=1)]


# gc=False: decoded lines hold no reference cycles, so the collector need not track them.
class HitClient(Struct, forbid_unknown_fields=True, gc=False):
    addr: Annotated[str, Meta(min_length=2)]
    port: Port
    country: str | None
    datacenter: str
    tor: str


class HitResponse(Struct, forbid_unknown_fields=True, gc=False):
    status: Annotated[int, Meta(ge=0, le=999)]
    length: Count
    time_ms: Count


class HitDetection(Struct, forbid_unknown_fields=True, gc=False):
    anomality: Number
    heur_distance: Number
    probability: Number
    stamps: list[Count]
    regex: list[Count]
    stamps_hash: Int32 | UnsetType = UNSET
    regex_hash: Int32 | UnsetType = UNSET


class HitLine(Struct, forbid_unknown_fields=True, gc=False):
    event: Literal["hit"]
    time: Time
    logged_at: Time
    ids: Annotated[list[NonEmpty], Meta(min_length=1)]
    domain: str
    method: NonEmpty
    path: str
    point: Annotated[list[str | Int64], Meta(min_length=1)]
    payloads: list[str]
    attack_type: str  # its pattern checked by ``_is_attack_type``, cached
    block_status: Literal["blocked", "monitored", "passed"]
    client: HitClient
    response: HitResponse
    detection: HitDetection


class HitNotification(Struct, gc=False):
    """A hit notification as the fast path builds it: ``map_hit``'s keys, in its order."""

    anomality: int | float
    domain: str
    heur_distance: int | float
    method: str
    parameter: str
    path: str
    payloads: list[str]
    point: list[str | int]
    probability: int | float
    remote_country: str | None
    remote_port: int
    remote_addr4: str | None
    remote_addr6: str | None
    datacenter: str
    tor: str
    request_time: int
    create_time: int
    response_len: int
    response_status: int
    response_time: int
    stamps: list[int]
    regex: list[int]
    stamps_hash: int
    regex_hash: int
    type: str
    block_status: str
    id: list[str]
    object_type: str


_decode = msgspec.json.Decoder(HitLine).decode
#: Appends a notification's JSON to a buffer: ``encode_into(note, buffer, -1)``.
encode_into = msgspec.json.Encoder().encode_into


def fast_hit(line: bytes) -> HitNotification | None:
    """A hit line -> its notification (as ``map_hit`` maps it), or ``None`` when this
    path does not take the line (then the exact path decides)."""
    try:
        return map_hit_line(_decode(line))
    except (msgspec.DecodeError, ValueError, InvalidValue):
        # DecodeError: not JSON, not a hit, or outside the subset; ValueError: invalid
        # UTF-8 in a string, or an address that is not an IP; InvalidValue: an
        # impossible date. The exact path gives the verdict and its reason.
        return None


@lru_cache(maxsize=4096)
def _time_seconds(value: str) -> int | None:
    """``unix_seconds`` of a time string the schema's pattern takes; None for any other,
    and for one the mapping refuses (2020-02-30)."""
    if _is_time(value) is None:
        return None
    try:
        return unix_seconds(value, "")
    except InvalidValue:
        return None


def seconds(value: str | float) -> int | None:
    """Whole Unix seconds of a hit's ``time`` or ``logged_at``, as ``map_hit`` gives them,
    or None when the fast path leaves the line to the exact path.

    A fraction of a second is cut before the cached parse (the lines of one second share
    the rest): whole seconds from 1970 to 2106 are those of the time without its fraction
    (``fromisoformat`` keeps at most six digits, and a timestamp below 2**32 is exact to
    well under a microsecond, so ``int()`` never rounds up into the next second).
    """
    if type(value) is not str:
        return int(value)
    head, dot, rest = value.partition(".")
    if len(head) > MAX_CACHED_KEY:
        return None  # not a time the pattern takes; the exact path says so
    if not dot:
        return _time_seconds(value)
    cut = 1 if rest[-1:] in ("Z", "z") else 6
    digits = rest[:-cut]
    if not (digits.isascii() and digits.isdigit()):
        return None
    whole = _time_seconds(head + rest[-cut:])
    return whole if whole is not None and 0 <= whole < 2**32 else None


@lru_cache(maxsize=256)
def _is_attack_type(value: str) -> bool:
    return _is_attack(value) is not None


#: ``parameter`` by point, for short points; emptied when full (the points of a site
#: repeat; a stream of new ones costs one dict look-up each). A key is at most 8 parts
#: and 128 characters: 4,096 of them hold a few MB at most, whatever the lines hold.
_parameters: dict[tuple[str | int, ...], str] = {}
_MAX_PARAMETERS = 4096
_MAX_CACHED_PARTS = 8
_MAX_CACHED_PARAMETER = 128  # characters


def _parameter(point: list[str | int]) -> str:
    key = tuple(point)
    parameter = _parameters.get(key)
    if parameter is None:
        parameter = parameter_from_point(point)
        if len(point) <= _MAX_CACHED_PARTS and len(parameter) <= _MAX_CACHED_PARAMETER:
            if len(_parameters) >= _MAX_PARAMETERS:
                _parameters.clear()
            _parameters[key] = parameter
    return parameter


def map_hit_line(hit: HitLine) -> HitNotification | None:
    """``map_hit`` on a typed line: the same fields, in the same order, the same values."""
    point, attack_type = hit.point, hit.attack_type
    if (
        not isinstance(point[0], str)
        or not point[0]
        or len(attack_type) > MAX_CACHED_KEY
        or not _is_attack_type(attack_type)
    ):
        return None
    request_time, create_time = seconds(hit.time), seconds(hit.logged_at)
    if request_time is None or create_time is None:
        return None
    client, response, detection = hit.client, hit.response, hit.detection
    addr4, addr6 = client_addresses(client.addr)
    stamps, regex = detection.stamps, detection.regex
    stamps_hash, regex_hash = detection.stamps_hash, detection.regex_hash
    return HitNotification(
        detection.anomality,
        hit.domain,
        detection.heur_distance,
        hit.method,
        _parameter(point),
        hit.path,
        hit.payloads,
        point,
        detection.probability,
        client.country,
        client.port,
        addr4,
        addr6,
        client.datacenter,
        client.tor,
        request_time,
        create_time,
        response.length,
        response.status,
        response.time_ms,
        stamps,
        regex,
        list_hash(stamps) if stamps_hash is UNSET else stamps_hash,
        list_hash(regex) if regex_hash is UNSET else regex_hash,
        attack_type,
        hit.block_status,
        hit.ids,
        "hit",
    )
