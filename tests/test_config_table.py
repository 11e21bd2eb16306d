"""The table of config keys (``agent.config.keys``) is the one declaration of each key:
the schema file is generated from it, the dataclasses agree with it, the example config
shows every key, and adding a key is a line in it plus a dataclass field."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
import yaml

from agent.config import (
    Config,
    FileSourceConfig,
    SocketSourceConfig,
    WebhookConfig,
    parse_config,
)
from agent.config.keys import KEYS, MIN_SPOOL_BYTES, TABLE
from agent.config.kinds import Enum, Text
from agent.config.load import Validators, parse_with
from agent.config.schema import generate_schema, render_schema
from agent.config.table import Key, Nested, Node, Section, compile_table
from agent.config.units import format_duration, format_size
from agent.errors import ConfigError
from agent.schemas import fast_validator, load_schema, python_validator
from agent.spool.capacity import MIN_MAX_BYTES
from tests.test_schemas import mutations

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "schemas" / "config.schema.json"
EXAMPLE = REPO / "config.example.yaml"
ENV = {"SOC_TOKEN": "t", "SOC_WEBHOOK_SECRET": "whsec_c2VjcmV0"}


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    return [str(problem) for problem in caught.value.problems]


def nodes(node: Node) -> Iterator[Node]:
    """Every section of the table below ``node``, variants included, once each."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            yield node
            stack += node.variants.values()
            stack += [key.kind.node for key in node.keys.values() if isinstance(key.kind, Nested)]


# --- the schema file is generated --------------------------------------------------------


def test_the_schema_file_is_what_the_table_generates() -> None:
    """After a change to the table, `make schema` rewrites schemas/config.schema.json."""
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_schema(TABLE)
    assert load_schema("config") == generate_schema(TABLE)  # the shipped copy too


def test_every_key_in_the_schema_is_described_for_editors() -> None:
    def described(schema: dict[str, Any], path: str) -> Iterator[str]:
        for name, member in schema.get("properties", {}).items():
            if member is True:  # a variant's branch naming the common keys
                continue
            assert member.get("description"), f"{path}{name} has no description"
            yield f"{path}{name}"
            yield from described(member, f"{path}{name}.")
            yield from described(member.get("items", {}), f"{path}{name}[].")
        for branch in schema.get("allOf", []):
            yield from described(branch["then"], path)

    found = list(described(generate_schema(TABLE), ""))
    keys = sum(isinstance(entry, Key) for entry in KEYS)
    sections = len(KEYS) - keys - 3  # the root and the two sources[] variants hold no key
    assert len(found) == len(set(found)) == keys + sections


# --- the dataclasses and the table agree ---------------------------------------------------


def test_every_dataclass_field_is_filled_by_a_key_and_every_key_fills_one() -> None:
    seen = 0
    for node in nodes(TABLE.root):
        model = node.section.model
        if model is None:  # sources[]: its variants have the models
            continue
        filled = [field for key in node.keys.values() for field in key.fields]
        assert len(filled) == len(set(filled)) or node.section.one_of, filled
        fields = {field.name for field in dataclasses.fields(model)} - {"warnings"}
        assert set(filled) == fields, model.__name__
        seen += 1
    assert seen == 13  # Config, Metrics, Log, File, Socket, Spool, Webhook, TLS, Batch, ...


def defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """A document giving every key its default, as the schema shows it."""
    out: dict[str, Any] = {}
    for name, member in schema.get("properties", {}).items():
        if member is not True and "default" in member:
            out[name] = member["default"]
        elif member is not True and member.get("type") == "object" and defaults(member):
            out[name] = defaults(member)  # signing has none: it is left out
    return out


def test_the_defaults_the_schema_shows_are_the_dataclass_defaults() -> None:
    schema = generate_schema(TABLE)
    webhook = schema["properties"]["webhooks"]["items"]
    source = schema["properties"]["sources"]["items"]
    file_branch, socket_branch = (branch["then"] for branch in source["allOf"])
    document = defaults(schema)
    document["webhooks"] = [
        {"name": "w", "url": "https://h.example/x", "events": ["hit"]} | defaults(webhook)
    ]
    document["sources"] = [
        {"name": "f", "type": "file", "paths": ["/a.log"]}
        | defaults(source)
        | defaults(file_branch),
        {"name": "s", "type": "unix_socket", "path": "/run/s.sock"}
        | defaults(source)
        | defaults(socket_branch),
    ]
    assert "batch" in document["webhooks"][0] and "listen" in document["metrics"]
    config = parse_config(json.dumps(document), {})
    assert config == Config(
        webhooks=(WebhookConfig("w", "https://h.example/x", frozenset({"hit"})),),
        sources=(FileSourceConfig("f", ("/a.log",)), SocketSourceConfig("s", "/run/s.sock")),
    )


def test_the_spool_minimum_is_the_spools() -> None:
    assert MIN_SPOOL_BYTES == MIN_MAX_BYTES


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (0.2, "200ms"),
        (15.0, "15s"),
        (300.0, "5m"),
        (86400.0, "24h"),
        (90.0, "90s"),
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (0.0001, 0.0001),  # no unit writes it exactly: seconds
    ],
)
def test_format_duration(seconds: float, written: str | float) -> None:
    assert format_duration(seconds) == written


@pytest.mark.parametrize(
    ("size", "written"),
    [(1, "1"), (1024, "1KiB"), (1536, "1536"), (2 << 20, "2MiB"), (1 << 30, "1GiB")],
)
def test_format_size(size: int, written: str) -> None:
    assert format_size(size) == written


# --- the example config shows every key ----------------------------------------------------

#: Keys config.example.yaml shows commented out (optional, or needing files).
COMMENTED_OUT = {
    "webhooks[].allow_http",
    "webhooks[].tls.ca_file",
    "webhooks[].tls.cert_file",
    "webhooks[].tls.key_file",
    "webhooks[].signing.secrets",
    "webhooks[].filter",
    "webhooks[].filter.block_status",
    "webhooks[].filter.attack_types",
    "webhooks[].filter.domains",
    "webhooks[].filter.threats",
    "wallarm",
    "wallarm.client_name",
    "wallarm.cloud",
}


def places(value: Any, prefix: str = "") -> Iterator[str]:
    """``webhooks``, ``webhooks[].tls``, ``webhooks[].tls.verify``, ... of a document."""
    items = value.items() if isinstance(value, dict) else []
    for name, member in items:
        place = f"{prefix}{name}"
        yield place
        if isinstance(member, dict) and name != "headers":
            yield from places(member, f"{place}.")
        elif isinstance(member, list) and member and isinstance(member[0], dict):
            for item in member:
                yield from places(item, f"{place}[].")


def test_the_example_config_shows_every_key() -> None:
    """A key added to the table must be added to config.example.yaml, the reference."""
    data = yaml.safe_load(EXAMPLE.read_text())
    shown = set(places(data))
    text = EXAMPLE.read_text()
    for place in COMMENTED_OUT:
        assert re.search(rf"#.*\b{place.rpartition('.')[2]}:", text), place
    declared = {
        re.sub(r"\[\w+\]", "[]", key.place).removesuffix("[]")
        for node in nodes(TABLE.root)
        for key in node.keys.values()
    }
    assert shown | COMMENTED_OUT == declared


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "secret"),
    [
        (("webhooks", 0, "headers", "Authorization"), True),
        (("webhooks", 3, "signing", "secret"), True),
        (("webhooks", 3, "signing", "secrets", 1), True),
        (("webhooks", 0, "url"), True),
        (("webhooks", 0, "method"), False),
        (("webhooks", 0, "signing"), False),
        (("sources", 0, "path"), False),
        (("headers",), False),
    ],
)
def test_the_table_says_where_secrets_are(loc: tuple[str | int, ...], secret: bool) -> None:
    assert TABLE.holds_secret(loc) is secret


# --- the two validators --------------------------------------------------------------------


def full_document() -> dict[str, Any]:
    """The example config with every optional key set, as data."""
    data = yaml.safe_load(EXAMPLE.read_text())
    hook = data["webhooks"][0]
    hook |= {"allow_http": False, "headers": {"Authorization": "Bearer x", "X-A": "b"}}
    hook["tls"] |= {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"}
    hook["signing"] = {"secrets": ["whsec_c2VjcmV0", "raw"]}
    return data  # type: ignore[no-any-return]


def test_the_quick_and_the_full_validator_agree_on_every_verdict() -> None:
    """The compiled validator's verdict decides whether the full one runs: they must
    agree, a value with a trailing newline included (Python's ``$`` matches before it)."""
    full, quick = python_validator("config"), fast_validator("config")
    document = full_document()
    assert full.is_valid(document)
    corpus = [document, *mutations(document)]
    disagreements = [doc for doc in corpus if full.is_valid(doc) != quick.is_valid(doc)]
    assert not disagreements, json.dumps(disagreements[:3])[:2000]
    assert sum(not full.is_valid(doc) for doc in corpus) >= 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('webhooks: [{name: "w\\n", url: "https://h.example/", events: []}]',
         "webhooks[0].name: must be a name of up to 64 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit"),
        ('webhooks: [{name: w, url: "https://h.example/", events: [], headers: {"X-A\\n": v}}]',
         "webhooks[0].headers.X-A\n: is not a header name: use letters, digits and "
         "!#$%&'*+-.^_`|~"),
        ('sources: [{name: s, type: unix_socket, path: /s, socket_mode: "0660\\n"}]',
         'sources[0].socket_mode: must be permissions as a quoted string of octal digits, '
         'like "0660"'),
    ],
)  # fmt: skip
def test_a_trailing_newline_is_no_part_of_a_name_header_or_mode(text: str, message: str) -> None:
    """A name names files; a header name with a line break cannot be sent."""
    assert problems(text) == [message]


def test_a_yaml_value_json_cannot_hold_is_reported_at_its_path() -> None:
    """jsonschema_rs refuses a YAML date outright; the full validator says where it is."""
    assert problems("state_dir: 2024-01-01\n") == ["state_dir: must be a string, not a date"]


# --- adding a key ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PriorityWebhookConfig(WebhookConfig):
    priority: str = "normal"  # the one field a new key needs


@dataclasses.dataclass(frozen=True)
class FleetConfig:
    site: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class FleetRootConfig(Config):
    fleet: FleetConfig = FleetConfig()


def region_from_console_url(fields: dict[str, Any]) -> dict[str, Any]:
    """A default depending on another key: the root section's ``finish``."""
    fleet = fields.get("fleet", FleetConfig())
    if fleet.region is not None:
        return fields
    url = fields.get("console_url", Config.console_url)
    region = "US" if url.startswith("https://us1.") else "EU"
    return fields | {"fleet": dataclasses.replace(fleet, region=region)}


def extended_table() -> list[Section | Key]:
    """KEYS with a hypothetical webhooks[].priority and fleet section, as the package
    docstring says keys are added."""
    entries: list[Section | Key] = []
    for entry in KEYS:
        if isinstance(entry, Section) and entry.place == "webhooks[]":
            entry = dataclasses.replace(entry, model=PriorityWebhookConfig)
        if isinstance(entry, Section) and entry.place == "":
            entry = dataclasses.replace(
                entry, model=FleetRootConfig, finish=region_from_console_url
            )
        entries.append(entry)
        if isinstance(entry, Key) and entry.place == "webhooks[].method":
            entries.append(Key("webhooks[].priority", Enum("normal", "high"), "The queue."))
    entries += [
        Section("fleet", FleetConfig, "Where the node runs."),
        Key("fleet.site", Text(), "Default: none."),
        Key("fleet.region", Enum("US", "EU"), "Default: from console_url."),
    ]
    return entries


def test_a_new_key_is_a_line_in_the_table_and_a_field_in_the_dataclass() -> None:
    table = compile_table(extended_table())
    schema = generate_schema(table)
    jsonschema.Draft202012Validator.check_schema(schema)
    validators = Validators(
        jsonschema.Draft202012Validator(schema), jsonschema_rs.Draft202012Validator(schema)
    )

    def parse(text: str) -> Any:
        return parse_with(table, validators, text, {}, "<t>")

    hook = "webhooks: [{name: w, url: 'https://h.example/', events: [hit]%s}]\n"
    assert parse(hook % "").webhooks[0].priority == "normal"
    assert parse(hook % ", priority: high").webhooks[0].priority == "high"
    member = schema["properties"]["webhooks"]["items"]["properties"]["priority"]
    assert member == {"description": "The queue.", "enum": ["normal", "high"], "default": "normal"}
    with pytest.raises(ConfigError) as refused:
        parse(hook % ", priority: urgent" + "fleet: {sight: x}\n")
    assert [str(p) for p in refused.value.problems] == [
        "webhooks[0].priority: must be one of normal, high, not 'urgent'",
        "fleet.sight: unknown key",
    ]
    assert parse("log: {}\n").fleet == FleetConfig(None, "EU")
    us = parse("console_url: https://us1.my.wallarm.com\nfleet: {site: acme}\n")
    assert us.fleet == FleetConfig("acme", "US")
