"""The config's JSON Schema, both ways: generated from the table of keys, and its
validation errors translated into problems at YAML paths.

``generate_schema`` builds ``schemas/config.schema.json`` (2020-12) from
``agent.config.keys``: the contract file users and editors validate against, and the
one the loader validates with. ``python -m agent.config PATH`` (``make schema``) writes
it; a test fails when the file differs from what the table generates.

``schema_problems`` runs a validator over the data: one ``unknown key`` per unexpected
key, at the key itself; ``is required`` at the mapping; otherwise the failing
fragment's ``errorMessage``, or words for the failed keyword. A value is quoted only in
an enum's message, and never where ``holds_secret`` says it may be a credential or where
the environment gave it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema

from agent.config.document import Loc, Located, kind_of
from agent.config.kinds import Schema
from agent.config.table import Table

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def generate_schema(table: Table) -> Schema:
    """The JSON Schema of the config the table describes."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tailhook configuration",
        "description": table.root.section.description,
        "$comment": (
            "Generated from agent/config/keys.py by `make schema`: do not edit. Checked "
            "after ${NAME} substitution. Every mapping is closed (a typo is an error). "
            "errorMessage is the message when a value fails its fragment. What a schema "
            "cannot say (durations over 0, URLs, https, duplicate names, readable files, "
            "backoff order) is checked by agent.config's kinds and rules."
        ),
        **table.root.schema(),
        "$defs": dict(sorted(table.definitions.items())),
    }


def render_schema(table: Table) -> str:
    """The schema as the file holds it: indented, a list of plain values on one line."""
    return _render(generate_schema(table), "") + "\n"


def _render(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{_dumps(k)}: {_render(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        items = (inner + _render(item, inner) for item in value)
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return _dumps(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def schema_problems(
    validator: jsonschema.protocols.Validator,
    data: Any,
    touched: set[Loc],
    holds_secret: Callable[[Loc], bool],
) -> list[Located]:
    """Every JSON Schema error in ``data``, as problems at YAML paths. ``touched``: the
    locations whose value came from the environment."""
    problems: list[Located] = []
    for error in validator.iter_errors(data):
        problems.extend(_translate(error, touched, holds_secret))
    return problems


def _translate(
    error: jsonschema.ValidationError, touched: set[Loc], holds_secret: Callable[[Loc], bool]
) -> Iterator[Located]:
    loc: Loc = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    # Typed "Any | Unset" by the stubs; always set on an error from iter_errors.
    kind: Any = error.validator
    expected: Any = error.validator_value
    instance: Any = error.instance
    if "propertyNames" in error.schema_path:  # the key itself is wrong
        yield (*loc, str(instance)), schema.get("errorMessage", "is not a valid key")
    elif kind == "additionalProperties":
        known = schema.get("properties", {})
        for key in instance:
            if key not in known:
                yield (*loc, key), "unknown key"
    elif kind == "required":
        for key in expected:
            if key not in instance:
                yield (*loc, key), "is required"
    else:
        secret = loc in touched or holds_secret(loc)
        message = _message(kind, expected, instance, schema)
        if message is None:
            message = "is not valid" if secret else f"is not valid: {error.message}"
        elif kind in ("enum", "const") and not secret and isinstance(instance, str | int | float):
            message += f", not {instance!r}"
        yield loc, message


def _message(kind: str, expected: Any, value: Any, schema: dict[str, Any]) -> str | None:
    """What a failed keyword means, without quoting the value (None: no words for it)."""
    custom = schema.get("errorMessage")
    if kind == "type":
        if custom and "properties" not in schema:
            return f"{custom}, not {kind_of(value)}"
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_JSON_TYPES.get(name, name) for name in names)
        return f"must be {wanted}, not {kind_of(value)}"
    if custom and kind in ("anyOf", "oneOf", "not", "pattern"):
        return str(custom)
    if kind in ("enum", "const"):
        options = expected if kind == "enum" else [expected]
        return "must be one of " + ", ".join(str(option) for option in options)
    simple = {
        "minimum": f"must be at least {expected}",
        "maximum": f"must be at most {expected}",
        "exclusiveMinimum": f"must be more than {expected}",
        "minItems": "must not be empty" if expected == 1 else f"needs at least {expected} items",
        "minLength": "must not be empty" if expected == 1 else f"needs {expected} characters",
        "maxLength": f"must be at most {expected} characters long",
        "uniqueItems": "must not list the same item twice",
        "pattern": f"must match {expected}",
    }
    return simple.get(kind)
