"""The event and notification schemas: valid JSON Schema 2020-12, and jsonschema (pure
Python, slow paths) and jsonschema_rs (compiled, hot path) give the same verdict on a
corpus of valid events and of invalid ones made by mutating them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.formats import MappingContext
from agent.formats.modsecurity import ModSecurityFormat
from agent.formats.native import NativeFormat
from agent.schemas import fast_validator, load_schema, python_validator

DATA = Path(__file__).parent / "data"

INPUT_SCHEMAS = ["hit", "vulnerability", "system", "scope", "modsecurity"]
OUTPUT_SCHEMAS = [f"notification-{kind}" for kind in ("hit", "vulnerability", "system", "scope")]

JOHN = {"name": "John Doe", "email": "johndoe@example.com"}
SMITH = {"name": "John Smith", "email": "johnsmith@example.com", "role": "analyst"}
SOC = {"name": "soc", "type": "webhook"}


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def native_samples() -> dict[str, dict[str, Any]]:
    return {event["event"]: event for event in jsonl(DATA / "native" / "detections.jsonl")}


def valid_events() -> dict[str, list[dict[str, Any]]]:
    """Valid instances of every input schema."""
    samples = native_samples()
    hit = samples["hit"]
    ipv6 = copy.deepcopy(hit)
    ipv6["client"]["addr"] = "2001:db8::1"
    ipv6["time"], ipv6["logged_at"] = 1591261367, 1591261381.25
    hashed = copy.deepcopy(hit)
    hashed["detection"].update(stamps_hash=-5, regex_hash=7, regex=[1, 2])
    hashed["point"] = ["post", "json_doc", "array", 0]
    system = [
        {"event": "system", "time": 1, "action": action, "actor": JOHN, "user": SMITH}
        for action in ("create_user", "update_user", "delete_user")
    ] + [
        {
            "event": "system",
            "time": "2020-06-04T09:11:00+03:00",
            "action": action,
            "integration": SOC,
        }
        for action in ("disable_integration", "delete_integration", "integration_broken")
    ]
    system.append({**system[3], "actor": JOHN})
    scope = [
        {"event": "scope", "time": 1, "change": change, "kind": kind, "values": ["a", "b"]}
        for change in ("added", "removed", "changed")
        for kind in ("ip", "host", "domain", "service")
    ]
    modsecurity = jsonl(DATA / "modsecurity" / "blocked.jsonl")
    modsecurity += jsonl(DATA / "modsecurity" / "monitored.jsonl")
    modsecurity += [  # ModSecurity 2's layout: its first recorded attack
        line
        for line in jsonl(DATA / "modsecurity" / "apache-blocked.jsonl")
        if line["audit_data"].get("messages")
    ][:1]
    return {
        "hit": [hit, ipv6, hashed],
        "vulnerability": [samples["vulnerability"]],
        "system": [samples["system"], *system],
        "scope": [samples["scope"], *scope],
        "modsecurity": modsecurity,
    }


def valid_notifications() -> dict[str, list[dict[str, Any]]]:
    ctx = MappingContext()
    native, modsec = NativeFormat(), ModSecurityFormat()
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in OUTPUT_SCHEMAS}
    for schema, events in valid_events().items():
        for event in events:
            fmt = modsec if schema == "modsecurity" else native
            kind, notification = fmt.convert(copy.deepcopy(event), ctx)
            assert notification is not None
            found[f"notification-{kind}"].append(notification)
    return found


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a member of a JSON document (dict keys and list indexes)."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, member in items:
        yield (*prefix, key)
        if isinstance(member, (dict, list)):
            yield from paths(member, (*prefix, key))


FULLWIDTH_DIGITS = {ord("0") + digit: 0xFF10 + digit for digit in range(10)}


def replacements(original: Any) -> Iterator[Any]:
    """Wrong types, wrong values, and extra nesting for one member."""
    yield from (None, True, -1, 2.5, 10**12, "", "bogus", [], {})
    yield [original]
    yield {"value": original}
    if isinstance(original, str):
        yield original + "\n"  # `$` in Python's re matches before a final newline
        yield original.translate(FULLWIDTH_DIGITS)  # \d in Python's re matches these
        yield original.upper()


def mutations(document: dict[str, Any], limit_lists: int = 2) -> Iterator[dict[str, Any]]:
    """Mutated copies of a document: each member dropped, or replaced (see replacements)."""
    yield {**document, "unexpected": {"nested": [1, {"deeper": None}]}}
    for path in paths(document):
        if any(isinstance(part, int) and part >= limit_lists for part in path):
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            yield replaced(document, path, _DROP)
        for value in replacements(parent[path[-1]]):
            yield replaced(document, path, value)


_DROP = object()


def replaced(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    if value is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return changed


@pytest.mark.parametrize("name", INPUT_SCHEMAS + OUTPUT_SCHEMAS)
def test_each_schema_is_a_described_2020_12_schema(name: str) -> None:
    schema = load_schema(name)  # checks it against the metaschema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["description"]
    fast_validator(name)


@pytest.mark.parametrize("name", INPUT_SCHEMAS)
def test_python_and_rust_validators_agree_on_input_events(name: str) -> None:
    valid = valid_events()[name]
    corpus = list(valid)
    for document in valid[:3]:
        corpus.extend(mutations(document))
    invalid = assert_agreement(name, corpus)
    assert all(python_validator(name).is_valid(event) for event in valid)
    assert invalid >= 50, f"only {invalid} invalid variants of {name}"


@pytest.mark.parametrize("name", OUTPUT_SCHEMAS)
def test_python_and_rust_validators_agree_on_notifications(name: str) -> None:
    valid = valid_notifications()[name]
    assert valid, name
    corpus = list(valid)
    for document in valid[:2]:
        corpus.extend(mutations(document))
    invalid = assert_agreement(name, corpus)
    assert all(python_validator(name).is_valid(notification) for notification in valid)
    assert invalid >= 50, f"only {invalid} invalid variants of {name}"


def assert_agreement(name: str, corpus: list[Any]) -> int:
    """Both validators give each instance the same verdict; returns how many were invalid."""
    slow, fast = python_validator(name), fast_validator(name)
    disagreements = [doc for doc in corpus if slow.is_valid(doc) != fast.is_valid(doc)]
    assert not disagreements, orjson.dumps(disagreements[:3]).decode()
    return sum(not slow.is_valid(doc) for doc in corpus)


def test_dropping_any_required_member_of_a_hit_invalidates_it() -> None:
    hit = native_samples()["hit"]
    validator = fast_validator("hit")
    for path in paths(hit):
        if path[-1] in ("stamps_hash", "regex_hash") or isinstance(path[-1], int):
            continue
        assert not validator.is_valid(replaced(hit, path, _DROP)), path


@pytest.mark.parametrize(
    "summary",
    ["New vulnerability identified", "[Test message] New vulnerability identified"],
)
def test_notification_summaries_may_carry_the_test_message_prefix(summary: str) -> None:
    notification = valid_notifications()["notification-vulnerability"][0]
    notification["summary"] = summary
    assert python_validator("notification-vulnerability").is_valid(notification)
