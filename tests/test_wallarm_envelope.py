"""``payload: wallarm``: each §5 notification in Wallarm's current envelope (CONTRACT §5a),
field for field, and every envelope held against its output schema."""

from __future__ import annotations

import copy
import socket
from typing import Any

import orjson
import pytest

from agent.config import Config, WallarmConfig, WebhookConfig
from agent.formats import ATTACK_TYPES, BLOCK_STATUSES, THREATS, MappingContext
from agent.formats.modsecurity import CRS_TYPES, TAG_TYPES, UNTYPED
from agent.formats.native import NativeFormat
from agent.formats.wallarm import (
    Identity,
    envelope,
    identity_of,
    vulnerability_fields,
    wrap,
)
from agent.pipeline.routing import form_of
from agent.schemas import fast_validator, load_schema, python_validator
from agent.spool.routes import Form
from tests.test_schemas import assert_agreement, mutations, native_samples, valid_notifications

ACME = Identity("acme", "EU")
KINDS = ("hit", "vulnerability", "system", "scope")
ENVELOPE_SCHEMAS = [f"wallarm-{kind}" for kind in KINDS]


def mapped(kind: str, console_url: str = "https://my.wallarm.com") -> dict[str, Any]:
    line = copy.deepcopy(native_samples()[kind])
    got, notification = NativeFormat().convert(line, MappingContext(console_url=console_url))
    assert got == kind and notification is not None
    return notification


def test_a_hit_is_wrapped_with_host_beside_domain() -> None:
    hit = mapped("hit")
    assert envelope(hit, ACME) == {
        "summary": "[Wallarm] New hit detected",
        "details": {
            "client_name": "acme",
            "cloud": "EU",
            "notification_type": "new_hits",
            "hit": {**hit, "host": "example.com"},
        },
    }


def test_a_vulnerability_takes_id_and_optional_fields_from_its_line() -> None:
    line = {**native_samples()["vulnerability"], "method": "GET", "path": "/login"}
    fields = vulnerability_fields(line)
    assert fields == {
        "id": 282157,
        "method": "GET",
        "parameter": None,
        "path": "/login",
        "discovered_by": None,
    }
    wrapped = envelope(mapped("vulnerability"), ACME, fields)
    title = (
        "Missing \"Strict-Transport-Security\" header in server's response at '93.184.216.34:443'"
    )
    assert wrapped["details"] == {
        "client_name": "acme",
        "cloud": "EU",
        "notification_type": "vuln",
        "vuln_link": "https://my.wallarm.com/object/282157",
        "vuln": {
            "domain": "www.example.com",
            "id": 282157,
            "method": "GET",
            "parameter": None,
            "path": "/login",
            "title": title,
            "discovered_by": None,
            "threat": "Low",
            "type": "Info",
        },
    }
    assert wrapped["summary"] == "[Wallarm] New vulnerability detected"
    assert wrapped["description"].split("\n") == [
        "Notification type: vuln",
        "",
        "New vulnerability was detected in your system.",
        "",
        "ID: 282157",
        f"Title: {title}",
        "Domain: www.example.com",
        "Path: /login",
        "Method: GET",
        "Discovered by: ",
        "Parameter: ",
        "Type: Info",
        "Threat: Low",
        "",
        "More details: https://my.wallarm.com/object/282157",
        "",
        "",
        "Client: acme",
        "Cloud: EU",
        "",  # the text ends with a newline, as Wallarm's
    ]


def test_a_vulnerability_kept_without_its_line_fields_takes_its_id_from_the_link() -> None:
    """One queued again from a dead letter: only the §5 object is left."""
    vuln = envelope(mapped("vulnerability"), ACME)["details"]["vuln"]
    assert (vuln["id"], vuln["method"], vuln["path"]) == (282157, None, None)


def test_system_and_scope_envelopes_carry_the_details_beside_the_identity() -> None:
    system = mapped("system")
    assert envelope(system, ACME) == {
        "summary": "[Wallarm] New user added",
        "description": "Notification type: create_user\n\n" + system["description"],
        "details": {
            "client_name": "acme",
            "cloud": "EU",
            "notification_type": "create_user",
            "time": system["time"],
            "actor": {"name": "John Doe", "email": "johndoe@example.com"},
            "user": {"name": "John Smith", "email": "johnsmith@example.com", "role": "analyst"},
        },
    }
    scope = mapped("scope")
    assert envelope(scope, ACME) == {
        "summary": "[Wallarm] Network perimeter has changed",
        "description": "Notification type: new_scope_object_ips\n\n"
        "New IP addresses were discovered in the network perimeter: 8.8.8.8",
        "details": {
            "client_name": "acme",
            "cloud": "EU",
            "notification_type": "new_scope_object_ips",
            "time": scope["time"],
            "change": "added",
            "kind": "ip",
            "values": ["8.8.8.8"],
        },
    }


HOST = socket.gethostname()


@pytest.mark.parametrize(
    ("console_url", "given", "identity"),
    [
        ("https://my.wallarm.com", WallarmConfig(), Identity(HOST, "EU")),
        ("https://us1.my.wallarm.com", WallarmConfig(), Identity(HOST, "US")),
        ("https://us1.my.wallarm.com", WallarmConfig("acme", "EU"), Identity("acme", "EU")),
        ("https://console.example.com", WallarmConfig(cloud="US"), Identity(HOST, "US")),
    ],
)
def test_the_identity_defaults_to_the_host_name_and_the_consoles_cloud(
    console_url: str, given: WallarmConfig, identity: Identity
) -> None:
    assert identity_of(given.client_name, given.cloud, console_url) == identity
    config = Config(console_url=console_url, wallarm=given)
    hook = WebhookConfig("w", "https://h.example/", frozenset({"hit"}), payload="wallarm")
    assert form_of(config, hook) == Form("wallarm", "json_array", identity)
    assert form_of(config, WebhookConfig("c", "https://h.example/", frozenset())) == Form()


def test_wrapping_a_stored_object_gives_the_bytes_of_its_envelope() -> None:
    """Hits are spliced in as stored rather than serialised again: the same bytes."""
    fields = vulnerability_fields(native_samples()["vulnerability"])
    odd = Identity('node "7" \u00fc\u2028', "US")  # escapes in the spliced head
    for name, notifications in valid_notifications().items():
        for notification in notifications:
            extra = fields if name == "notification-vulnerability" else None
            for who in (ACME, odd):
                expected = orjson.dumps(envelope(notification, who, extra))
                assert wrap(orjson.dumps(notification), who, extra) == expected


def test_a_form_is_recorded_and_read_back_as_it_was() -> None:
    for form in (
        Form(),
        Form("classic", "ndjson"),
        Form("wallarm", "json_array", ACME),
        Form("wallarm", "ndjson", Identity("ACME “ü”", "US")),
    ):
        assert Form.recorded(form.record()) == form
    assert Form().record() is None  # today's batches: nothing more kept


# --- the output schemas ---------------------------------------------------------------------


def envelopes() -> dict[str, list[dict[str, Any]]]:
    """Every notification the schema tests map (native and ModSecurity), wrapped."""
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in ENVELOPE_SCHEMAS}
    line = native_samples()["vulnerability"]
    for name, notifications in valid_notifications().items():
        kind = name.removeprefix("notification-")
        for notification in notifications:
            for fields in (vulnerability_fields(line), None) if kind == "vulnerability" else [None]:
                found[f"wallarm-{kind}"].append(envelope(notification, ACME, fields))
    return found


@pytest.mark.parametrize("name", ENVELOPE_SCHEMAS)
def test_every_mapped_object_wrapped_is_valid_against_its_envelope_schema(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["description"]
    valid = envelopes()[name]
    assert valid
    slow = python_validator(name)
    for document in valid:
        assert slow.is_valid(document), next(slow.iter_errors(document)).message


@pytest.mark.parametrize("name", ENVELOPE_SCHEMAS)
def test_python_and_rust_validators_agree_on_envelopes(name: str) -> None:
    valid = envelopes()[name]
    corpus = list(valid)
    for document in valid[:2]:
        corpus.extend(mutations(document))
    invalid = assert_agreement(name, corpus)
    assert invalid >= 50, f"only {invalid} invalid variants of {name}"
    assert all(fast_validator(name).is_valid(document) for document in valid)


def test_a_test_message_summary_is_valid_and_another_prefix_is_not() -> None:
    validator = fast_validator("wallarm-scope")
    scope = envelope(mapped("scope"), ACME)
    assert validator.is_valid({**scope, "summary": "[Test message] " + scope["summary"]})
    assert not validator.is_valid({**scope, "summary": "[Wallarm] [Test message] x"})


def test_the_envelope_hit_is_the_notification_hit_plus_host() -> None:
    """Two files hold the hit's fields: this keeps them from drifting apart."""
    plain = load_schema("notification-hit")
    wrapped = load_schema("wallarm-hit")["properties"]["details"]["properties"]["hit"]
    assert wrapped["required"] == [*plain["required"], "host"]
    assert wrapped["properties"] == {**plain["properties"], "host": wrapped["properties"]["host"]}
    assert wrapped["additionalProperties"] is False and wrapped["anyOf"] == plain["anyOf"]


def test_the_closed_value_lists_are_the_schemas_and_the_formats() -> None:
    """What a filter may name: the schemas' enums, and every type the formats give."""
    hit = load_schema("hit")["properties"]
    assert tuple(hit["block_status"]["enum"]) == BLOCK_STATUSES
    assert tuple(load_schema("vulnerability")["properties"]["threat"]["enum"]) == THREATS
    produced = {*CRS_TYPES.values(), *TAG_TYPES.values(), UNTYPED}
    assert produced <= set(ATTACK_TYPES)
    assert len(set(ATTACK_TYPES)) == len(ATTACK_TYPES)
