"""What a config value can be: each kind says how it is written (its JSON Schema
fragment), what it must be beyond what a schema can say, and what it becomes.

A ``Kind`` has four faces, all derived from one object so they cannot drift apart:

- ``schema()``: the fragment in ``schemas/config.schema.json``; a shared one is a
  ``$ref`` to ``$defs`` (``definitions()``). ``errorMessage`` (the keyword VS Code's YAML
  extension and ajv-errors show) is the message when the value fails the fragment.
- ``problem(value)``: what is wrong with a value beyond what the schema can judge (a
  timeout of ``0``, a port of 99999), or None; ``check`` adds it to a list of problems
  (a section's kind walks its keys instead). It is also called on values the schema
  refused: the schema's problem at that path is then the one reported.
- ``convert(value)``: the dataclass value, from a value that passed both.
- ``render(default)``: a dataclass default as it would be written in YAML, for the
  schema's ``default`` (None: not shown).

Messages never quote the value: it may be a secret or come from the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from agent.config.document import Loc, Located
from agent.config.units import (
    DURATION_PATTERN,
    LISTEN_PATTERN,
    SIZE_PATTERN,
    format_duration,
    format_listen_address,
    format_size,
    parse_duration,
    parse_listen_address,
    parse_size,
)

Schema = dict[str, Any]
_SPACE = re.compile(r"\s")  # what str.isspace() finds, a character at a time


class Kind:
    """A value written as its schema fragment says, converted as is (the default)."""

    def schema(self) -> Schema:
        raise NotImplementedError

    def definitions(self) -> dict[str, Schema]:
        return {}

    def problem(self, value: Any) -> str | None:
        return None

    def check(self, loc: Loc, value: Any, out: list[Located]) -> None:
        """Add to ``out`` the problem of ``value`` at ``loc``, if any."""
        if (message := self.problem(value)) is not None:
            out.append((loc, message))

    @property
    def checks(self) -> bool:
        """Whether it checks anything beyond the schema (else it is not asked)."""
        return type(self).problem is not Kind.problem or type(self).check is not Kind.check

    def convert(self, value: Any) -> Any:
        return value

    def render(self, default: Any) -> Any:
        return default


class Text(Kind):
    """A non-empty string."""

    def schema(self) -> Schema:
        return {"type": "string", "minLength": 1}


class FilePath(Text):
    """A non-empty string that becomes a ``Path``."""

    def convert(self, value: Any) -> Path:
        return Path(value)

    def render(self, default: Any) -> Any:
        return str(default)


class Bool(Kind):
    def schema(self) -> Schema:
        return {"type": "boolean"}


class Integer(Kind):
    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def schema(self) -> Schema:
        return {"type": "integer", "minimum": self.minimum}


class Enum(Kind):
    """One of a few words."""

    def __init__(self, *options: str) -> None:
        self.options = options

    def schema(self) -> Schema:
        return {"enum": list(self.options)}


class EnumSet(Kind):
    """A list of some of a few words, each at most once; becomes a frozenset.
    ``non_empty``: ``[]`` is refused (a filter that would let nothing through)."""

    def __init__(self, *options: str, non_empty: bool = False) -> None:
        self.options = options
        self.non_empty = non_empty

    def schema(self) -> Schema:
        out: Schema = {"type": "array", "uniqueItems": True}
        if self.non_empty:
            out["minItems"] = 1
        return out | {"items": {"enum": list(self.options)}}

    def convert(self, value: Any) -> frozenset[str]:
        return frozenset(value)


class TextList(Kind):
    """A non-empty list of non-empty strings; becomes a tuple."""

    def schema(self) -> Schema:
        return {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}

    def convert(self, value: Any) -> tuple[str, ...]:
        return tuple(value)


class OneItem(Kind):
    """One value of ``inner`` filling a tuple field (``signing.secret`` -> ``secrets``)."""

    def __init__(self, inner: Kind) -> None:
        self.inner = inner

    def schema(self) -> Schema:
        return self.inner.schema()

    def problem(self, value: Any) -> str | None:
        return self.inner.problem(value)

    def convert(self, value: Any) -> tuple[Any, ...]:
        return (self.inner.convert(value),)


class Shared(Kind):
    """A kind whose fragment is one entry of ``$defs``, referred to by every key using it."""

    name = ""
    definition: Schema = {}  # each subclass sets its own

    def schema(self) -> Schema:
        return {"$ref": f"#/$defs/{self.name}"}

    def definitions(self) -> dict[str, Schema]:
        return {self.name: self.definition}


class Name(Shared):
    """The name of a source or webhook: it names files (``dead-letter/NAME.jsonl``)."""

    name = "name"
    definition = {
        "type": "string",
        "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?!\n)$",
        "errorMessage": "must be a name of up to 64 letters, digits, '.', '_' or '-',"
        " starting with a letter or digit",
    }


class Duration(Shared):
    """Seconds, or a string with a unit; becomes float seconds. ``positive``: not 0."""

    name = "duration"
    definition = {
        "errorMessage": "must be a duration: seconds as a number, or a string with a unit"
        " (250ms, 15s, 5m, 24h)",
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": DURATION_PATTERN},
        ],
    }

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def problem(self, value: Any) -> str | None:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            return str(exc)
        return "must be more than 0" if self.positive and seconds == 0 else None

    def convert(self, value: Any) -> float:
        return parse_duration(value)

    def render(self, default: Any) -> Any:
        return format_duration(default)


class Size(Shared):
    """Bytes, or a string with a unit; becomes int bytes, at least ``minimum``."""

    name = "size"
    definition = {
        "errorMessage": "must be a size: bytes as a whole number, or a string with a unit"
        " (512B, 64KiB, 1MiB, 1GiB; KB, MB, GB are powers of 1000)",
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": SIZE_PATTERN},
        ],
    }

    def __init__(self, *, minimum: int = 0) -> None:
        self.minimum = minimum

    def problem(self, value: Any) -> str | None:
        try:
            size = parse_size(value)
        except ValueError as exc:
            return str(exc)
        return f"must be at least {format_size(self.minimum)}" if size < self.minimum else None

    def convert(self, value: Any) -> int:
        return parse_size(value)

    def render(self, default: Any) -> Any:
        return format_size(default)


class ListenAddress(Shared):
    """``HOST:PORT`` or ``[IPv6]:PORT``; becomes (host, port): a key filling two fields."""

    name = "listen_address"
    definition = {
        "type": "string",
        "pattern": LISTEN_PATTERN,
        "errorMessage": "must be HOST:PORT, like 127.0.0.1:9717, 0.0.0.0:9717 or [::1]:9717",
    }

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None  # the schema's
        try:
            parse_listen_address(value)
        except ValueError as exc:
            return str(exc)
        return None

    def convert(self, value: Any) -> tuple[str, int]:
        return parse_listen_address(value)

    def render(self, default: Any) -> Any:
        return format_listen_address(*default)


class OctalMode(Shared):
    """File permissions as a quoted string of octal digits (``"0660"``); becomes an int."""

    name = "octal_mode"
    definition = {
        "type": "string",
        "pattern": r"^0?[0-7]{3}(?!\n)$",
        "errorMessage": 'must be permissions as a quoted string of octal digits, like "0660"',
    }

    def convert(self, value: Any) -> int:
        return int(value, 8)

    def render(self, default: Any) -> Any:
        return f"{default:04o}"


class HeaderMap(Kind):
    """HTTP header names to string values; becomes a tuple of (name, value) pairs."""

    def schema(self) -> Schema:
        return {
            "type": "object",
            "propertyNames": {
                "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?!\n)$",
                "errorMessage": "is not a header name: use letters, digits and !#$%&'*+-.^_`|~",
            },
            "additionalProperties": {"type": "string"},
        }

    def convert(self, value: Any) -> tuple[tuple[str, str], ...]:
        return tuple(value.items())

    def render(self, default: Any) -> Any:
        return dict(default)


class Url(Kind):
    """An http or https URL with a host. ``base``: links are made under it, so its
    trailing ``/`` goes. Whether plain http is allowed is a rule across keys."""

    def __init__(self, *, base: bool = False) -> None:
        self.base = base

    def schema(self) -> Schema:
        return {"type": "string", "minLength": 1}

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None  # the schema's
        return url_problem(value)

    def convert(self, value: Any) -> str:
        text = str(value)
        return text.rstrip("/") if self.base else text


def url_problem(url: str) -> str | None:
    """Why ``url`` is no http(s) URL with a host, or None."""
    parts = split_url(url)
    if parts is None:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or _SPACE.search(url):
        return "must be an http or https URL"
    if not parts.hostname:
        return "has no host"
    return None


def split_url(url: str) -> SplitResult | None:
    """The parts of ``url``, or None when it cannot be split (a bad port, a lone ``[``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    return parts
