"""Seeded ways to break the documents of ``tests.support.event_docs``, and to write them.

``mutated`` breaks a document the ways the schemas are about: a required key dropped, a
value of the wrong type, out of range, null, ``1.0`` for an integer, a huge integer, an
extra key, a bad enum, a bad date or address; ``edge_mutations`` does each such change
in every place of one document; ``serialised`` writes a document as a producer might
(orjson, ``\\u`` escapes, spaces) and ``raw_mutated`` breaks its bytes (invalid UTF-8,
lone surrogates, ``NaN``, ``1e400``, duplicate keys, a NUL escape, trailing bytes).
"""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

import orjson

from tests.support.event_docs import BAD_ADDRESSES, BAD_DATES, IPV6

#: Values put where another value was: wrong types, nulls, edges, floats for integers.
ODD_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    1.0,
    0.0,
    -0.0,
    1.5,
    65535,
    65536,
    999,
    1000,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1e300,
    253402300799,
    253402300800,
    "",
    "x",
    "1",
    "hit",
    "HIT",
    "blocked",
    "Blocked",
    "Low",
    "low",
    "added",
    "ip",
    "create_user",
    "2020-06-04T09:02:47Z",
    [],
    [""],
    ["x"],
    [1],
    [-1],
    {},
    {"name": "n", "email": "e"},
    *BAD_DATES[:4],
    *BAD_ADDRESSES[:4],
)
#: Bytes put inside a string: invalid UTF-8, lone surrogates, escapes good and bad.
RAW_STRING_BREAKS = (
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\u0000",
    b"\\x",
    b"\x01",
    b"\\u00e9",
)
#: Raw number texts orjson reads differently from msgspec, or not at all.
RAW_NUMBERS = (
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"-9223372036854775809",
    b"9223372036854775808",
    b"1E2",
    b"1.0e0",
    b"-0",
    b"NaN",
    b"Infinity",
    b"01",
    b"1.",
    b"0x10",
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document (not the root), as a tuple of keys and indexes."""
    found: list[tuple[Any, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
    return found


def mutated(doc: dict[str, Any], rng: random.Random) -> Any:
    """The document broken in one to three places."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        places = paths(doc)
        if not places:
            return copy.deepcopy(rng.choice(([], "x", 1, None, {})))
        place = rng.choice(places)
        parent = doc
        for key in place[:-1]:
            parent = parent[key]
        last = place[-1]
        value = parent[last]
        roll = rng.random()
        if roll < 0.25 and isinstance(parent, dict):
            del parent[last]
        elif roll < 0.3 and isinstance(parent, list):
            parent.pop(last)
        elif roll < 0.4 and isinstance(value, dict):
            key = rng.choice(("extra", "x", "event", "stamps_hash", "role", "user"))
            value[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif roll < 0.5 and isinstance(value, int) and not isinstance(value, bool):
            parent[last] = rng.choice((value + 1, value - 1, float(value), -value, value * 2**40))
        elif roll < 0.55 and isinstance(value, str):
            parent[last] = rng.choice((value + "\n", value.upper(), "", value + " ", " " + value))
        elif roll < 0.6 and last in ("addr", "client_ip", "remote_address"):
            parent[last] = rng.choice(BAD_ADDRESSES + IPV6)
        elif roll < 0.65 and last in ("time", "logged_at", "time_stamp"):
            parent[last] = rng.choice(BAD_DATES)
        else:
            parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
    return doc


def serialised(doc: Any, rng: random.Random) -> bytes:
    """The document's bytes, written compactly, with ``\\u`` escapes, or with spaces."""
    roll = rng.random()
    if roll < 0.7:
        try:
            return orjson.dumps(doc)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits: json writes it
            return json.dumps(doc, ensure_ascii=False).encode()
    if roll < 0.85:
        return json.dumps(doc, ensure_ascii=True, allow_nan=False).encode()
    return json.dumps(doc, ensure_ascii=False, indent=None, separators=(" , ", " : ")).encode()


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NUMBER = re.compile(rb"(?<=[:\[,])-?[0-9][0-9.eE+-]*")


def raw_mutated(line: bytes, rng: random.Random) -> bytes:
    """The bytes of a line broken below the JSON value: encoding, numbers, keys, framing."""
    roll = rng.random()
    strings = list(_STRING.finditer(line))
    numbers = list(_NUMBER.finditer(line))
    if roll < 0.25 and strings:
        at = rng.choice(strings).end() - 1
        bad = rng.choice(RAW_STRING_BREAKS)
        return line[:at] + bad + line[at:]
    if roll < 0.5 and numbers:
        match = rng.choice(numbers)
        return line[: match.start()] + rng.choice(RAW_NUMBERS) + line[match.end() :]
    if roll < 0.65 and strings:  # a key written twice, the second value wins in orjson
        match = rng.choice(strings)
        if line[match.end() : match.end() + 1] == b":":
            return line[: match.start()] + match.group() + b':"dup",' + line[match.start() :]
        return line
    if roll < 0.8 and line.startswith(b"{"):
        extra = rng.choice(
            (b'"extra":1e400,', b'"extra":"\xff",', b'"extra":NaN,', b'"extra":[1,2],')
        )
        return b"{" + extra + line[1:]
    return rng.choice(
        (
            line + b" x",
            line + b"{}",
            b"\xef\xbb\xbf" + line,
            line[: rng.randrange(len(line) + 1)],
            b" \t" + line + b"  ",
            line.replace(b":", b": ", 1),
            b"[" + line + b"]",
        )
    )


#: Every leaf of a document gets each of these in ``edge_mutations``: each type, the
#: edges of each range in the schemas, floats for integers, integers beyond 64 bits.
EDGES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1.0,
    0.5,
    999,
    1000,
    65535,
    65536,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    253402300799,
    253402300800,
    253402300799.5,
    "",
    "x",
    "hit",
    [],
    {},
    [""],
    [1],
    [1.0],
)


def edge_mutations(doc: dict[str, Any]) -> list[Any]:
    """Each key of the document dropped, an extra key in each object, and each place
    given each of ``EDGES``, a string a trailing newline: one change per document."""
    out: list[Any] = []
    for place in paths(doc):
        changes: list[Any] = [*EDGES, _DROP]
        value = _at(doc, place)
        if isinstance(value, str):
            changes += [value + "\n", value.upper()]
        if isinstance(value, dict):
            changes.append(_EXTRA)
        for change in changes:
            copied = copy.deepcopy(doc)
            parent = _at(copied, place[:-1])
            if change is _DROP:
                del parent[place[-1]]
            elif change is _EXTRA:
                parent[place[-1]]["extra"] = 1
            else:
                parent[place[-1]] = copy.deepcopy(change)
            out.append(copied)
    out.append({**doc, "extra": 1})
    return out


_DROP, _EXTRA = object(), object()


def _at(doc: Any, place: tuple[Any, ...]) -> Any:
    for key in place:
        doc = doc[key]
    return doc
