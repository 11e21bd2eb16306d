"""Loading the JSON Schemas that ship inside the package (``agent.schema_data``).

Two validators exist for one schema: jsonschema_rs (compiled, for the per-event hot
path) and jsonschema (pure Python, for the config and for checking schema files), and
a test holds them to the same verdicts.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
import jsonschema_rs

from agent.errors import SchemaError


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``schemas/NAME.schema.json`` as a dict, checked against its metaschema."""
    resource = files("agent.schema_data") / f"{name}.schema.json"
    try:
        schema = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"schema {name!r} cannot be loaded: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaError(f"schema {name!r} is not a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"schema {name!r} is not a valid JSON Schema: {exc.message}") from exc
    return schema


def python_validator(name: str) -> jsonschema.protocols.Validator:
    """A jsonschema (pure Python) validator: full error paths, for slow paths."""
    return jsonschema.Draft202012Validator(load_schema(name))


def fast_validator(name: str) -> Any:
    """A compiled jsonschema_rs validator for the hot path."""
    return jsonschema_rs.Draft202012Validator(load_schema(name))


def schema_names() -> list[str]:
    """Every schema shipped, by name (``hit``, ``config``, ``notification-hit``, ...)."""
    suffix = ".schema.json"
    return sorted(
        entry.name[: -len(suffix)]
        for entry in files("agent.schema_data").iterdir()
        if entry.name.endswith(suffix)
    )
