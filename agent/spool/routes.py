"""Routes: which events each webhook takes, and how its request bodies are made.

A ``Route`` is a webhook's event types, its ``filter`` (compiled into an
``EventFilter``) and its ``Form``. ``Routing`` is the routes of every enabled webhook
at once, as the spool applies them when an event is accepted.

The filter (CONTRACT §3) is judged on an event's ``Facts``, taken from its notification
before it is serialised (``facts_of``): every condition given must hold, and one that
cannot apply to an event's type does not exclude it. ``block_status`` and
``attack_types`` judge hits, ``threats`` vulnerabilities, ``domains`` both (shell-style
globs, matched ignoring case, as DNS names are); system and scope events pass every
filter.

A ``Form`` is how stored events (§5 objects, as the spool keeps them) become a body:
``payload`` ``classic`` (as stored) or ``wallarm`` (each wrapped in its §5a envelope, with
the identity the form holds), ``body`` ``json_array`` or ``ndjson`` (one object per line,
each ending in a newline). A batch records its form, so a retry, after a restart or a
reload too, rebuilds the very bytes it first sent.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from agent.formats.wallarm import Identity, Wrapper

#: What a filter judges of an event: ``(event_type, block_status, attack_type, domain,
#: threat)``, None where its type has no such field; None for system and scope events.
Facts = tuple[str, str | None, str | None, str | None, str | None] | None

#: Facts whose verdict an ``EventFilter`` remembers (a node sees few domains and
#: types, so most events' facts were judged before).
VERDICT_CACHE = 4096

CONTENT_TYPES = {"json_array": "application/json", "ndjson": "application/x-ndjson"}


def facts_of(event_type: str, notification: dict[str, Any]) -> Facts:
    """The facts of a mapped notification (before it is serialised)."""
    if event_type == "hit":
        n = notification
        return "hit", n["block_status"], n["type"], n["domain"], None
    if event_type == "vulnerability":
        return "vulnerability", None, None, notification["domain"], notification["threat"]
    return None


class EventFilter:
    """A webhook's ``filter``: which of the events of its types it takes."""

    def __init__(
        self,
        block_status: Iterable[str] | None = None,
        attack_types: Iterable[str] | None = None,
        domains: Iterable[str] | None = None,
        threats: Iterable[str] | None = None,
    ) -> None:
        self.block_status = None if block_status is None else frozenset(block_status)
        self.attack_types = None if attack_types is None else frozenset(attack_types)
        self.threats = None if threats is None else frozenset(threats)
        self.domains = None if domains is None else tuple(domains)
        self._domain = (
            None
            if self.domains is None
            else re.compile(
                "|".join(f"(?:{fnmatch.translate(glob)})" for glob in self.domains),
                re.IGNORECASE,
            )
        )
        self._verdicts: dict[Facts, bool] = {}

    def admits(self, facts: Facts) -> bool:
        """Whether an event with these facts passes (None: system, scope: always)."""
        if facts is None:
            return True
        verdict = self._verdicts.get(facts)
        if verdict is None:
            verdict = self._judge(*facts)
            if len(self._verdicts) >= VERDICT_CACHE:
                self._verdicts.clear()
            self._verdicts[facts] = verdict
        return verdict

    def _judge(
        self, kind: str, status: str | None, attack: str | None, domain: str | None,
        threat: str | None,
    ) -> bool:  # fmt: skip
        if kind == "hit":
            if self.block_status is not None and status not in self.block_status:
                return False
            if self.attack_types is not None and attack not in self.attack_types:
                return False
        elif self.threats is not None and threat not in self.threats:
            return False
        return self._domain is None or self._domain.match(domain or "") is not None

    def _key(self) -> tuple[Any, ...]:
        return (self.block_status, self.attack_types, self.domains, self.threats)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventFilter) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        given = {k: v for k, v in zip(("block_status", "attack_types", "domains", "threats"),
                                      self._key(), strict=True) if v is not None}  # fmt: skip
        return f"EventFilter({given})"


@dataclass(frozen=True)
class Form:
    """How a webhook's body is made from stored events (see the module docstring)."""

    payload: str = "classic"  # classic | wallarm
    body: str = "json_array"  # json_array | ndjson
    identity: Identity | None = None  # for payload wallarm

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.body]

    @property
    def stored_as_is(self) -> bool:
        """Today's fast path: the stored bytes, joined into a JSON array."""
        return self.payload == "classic" and self.body == "json_array"

    @cached_property
    def wrap(self) -> Callable[[bytes, dict[str, Any] | None], bytes]:
        """One stored event (and its line fields) as this form's payload sends it."""
        if self.payload == "classic":
            return lambda raw, fields: raw
        assert self.identity is not None
        return Wrapper(self.identity)

    def join(self, parts: list[bytes]) -> bytes:
        """The body of these events, each as ``wrap`` gave it."""
        if self.body == "ndjson":
            return b"".join(part + b"\n" for part in parts)
        return b"[" + b",".join(parts) + b"]"

    def record(self) -> str | None:
        """As a batch keeps it (None: the default form)."""
        if self.stored_as_is:
            return None
        kept: dict[str, Any] = {"payload": self.payload, "body": self.body}
        if self.identity is not None:
            kept["client_name"] = self.identity.client_name
            kept["cloud"] = self.identity.cloud
        return orjson.dumps(kept).decode()

    @classmethod
    def recorded(cls, text: str | None) -> Form:
        """The form ``record`` kept."""
        if text is None:
            return cls()
        kept = orjson.loads(text)
        who = None
        if "client_name" in kept:
            who = Identity(kept["client_name"], kept["cloud"])
        return cls(kept["payload"], kept["body"], who)


@dataclass(frozen=True)
class Route:
    """One enabled webhook: the event types it takes, its filter, its form."""

    events: frozenset[str]
    filter: EventFilter | None = None
    form: Form = field(default_factory=Form)


@dataclass(frozen=True)
class Routing:
    """The routes of every enabled webhook, compiled for accepting events and forming
    batches: ``codes`` per webhook (type letters), the filtered webhooks, the type
    letters some unfiltered webhook takes (an event of those is kept whatever the
    filters say), and each webhook's form."""

    codes: dict[str, str]
    filters: tuple[tuple[str, str, EventFilter], ...]
    unfiltered_codes: str
    forms: dict[str, Form]

    @classmethod
    def of(
        cls, subscriptions: Mapping[str, frozenset[str] | Route], type_codes: dict[str, str]
    ) -> Routing:
        """From each webhook's route, or only the event types it takes."""
        routes = {
            name: route if isinstance(route, Route) else Route(route)
            for name, route in subscriptions.items()
        }
        codes = {
            name: "".join(type_codes[kind] for kind in sorted(route.events))
            for name, route in routes.items()
        }
        filters = tuple(
            (name, codes[name], route.filter)
            for name, route in routes.items()
            if route.filter is not None and codes[name]
        )
        filtered = {name for name, _, _ in filters}
        unfiltered = {code for name in codes if name not in filtered for code in codes[name]}
        forms = {name: route.form for name, route in routes.items()}
        return cls(codes, filters, "".join(sorted(unfiltered)), forms)
