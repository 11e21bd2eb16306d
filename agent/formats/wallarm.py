"""The current Wallarm envelope (CONTRACT §5a): a notification of §5 wrapped as Wallarm's
webhook integration sends it today, for a webhook with ``payload: wallarm``.

- hit: ``{"summary": "[Wallarm] New hit detected", "details": {"client_name", "cloud",
  "notification_type": "new_hits", "hit": HIT}}``, HIT the §5 hit plus ``host`` (the
  value of ``domain``);
- vulnerability: ``{"summary", "description", "details": {"client_name", "cloud",
  "notification_type": "vuln", "vuln_link", "vuln": {...}}}``; the ``vuln`` fields
  ``id``, ``method``, ``parameter``, ``path`` and ``discovered_by`` are not in the §5
  object, so they come from the input line (``vulnerability_fields``), kept beside the
  stored notification; ``description`` is Wallarm's text, line by line
  (``describe_vulnerability``);
- system and scope: ``{"summary": "[Wallarm] " + summary, "description": "Notification
  type: TYPE\\n\\n" + description, "details": {"client_name", "cloud",
  "notification_type", "time", and the §5 details}}``.

``client_name`` and ``cloud`` are the ``Identity`` of the config's ``wallarm`` section:
the node's host name and, from ``console_url``, ``US`` for a ``us1.`` host, else ``EU``,
unless given. ``wrap`` is deterministic (orjson, keys in a fixed order), so a batch
rebuilt from the spool with the identity recorded with it has the same bytes.

It never raises on a JSON object: a field an object lacks (one queued again from a
dead-letter file by hand) is null in its envelope.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

Notification = dict[str, Any]

PREFIX = "[Wallarm] "
HIT_SUMMARY = PREFIX + "New hit detected"
VULNERABILITY_SUMMARY = PREFIX + "New vulnerability detected"
#: The clouds a ``wallarm.cloud`` may name.
CLOUDS = ("EU", "US")
#: The vulnerability fields taken from the input line, not from the §5 object.
LINE_FIELDS = ("id", "method", "parameter", "path", "discovered_by")


@dataclass(frozen=True)
class Identity:
    """Who the envelopes say they come from (``details.client_name``, ``details.cloud``)."""

    client_name: str
    cloud: str


def default_cloud(console_url: str) -> str:
    """``US`` when the console's host starts with ``us1.``, else ``EU``."""
    host = urlsplit(console_url).hostname or ""
    return "US" if host.startswith("us1.") else "EU"


def identity_of(client_name: str | None, cloud: str | None, console_url: str) -> Identity:
    """The identity the config gives, its defaults filled in."""
    return Identity(client_name or socket.gethostname(), cloud or default_cloud(console_url))


def vulnerability_fields(line: dict[str, Any]) -> dict[str, Any]:
    """What a vulnerability's envelope needs of its input line: ``id`` and the optional
    ``method``, ``parameter``, ``path``, ``discovered_by`` (null when absent)."""
    return {name: line.get(name) for name in LINE_FIELDS}


class Wrapper:
    """Wraps serialised §5 notifications (compact JSON, as orjson writes them) for one
    identity: ``wrapper(raw, fields)`` gives the bytes of ``orjson.dumps(envelope(...))``.
    A hit, the bulk of the traffic, is spliced in as it is stored, ``host`` added before
    its closing brace, rather than serialised again (measured: half the cost)."""

    __slots__ = ("_head", "who")

    def __init__(self, who: Identity) -> None:
        self.who = who
        head = {"summary": HIT_SUMMARY, "details": {"client_name": who.client_name,
                "cloud": who.cloud, "notification_type": "new_hits", "hit": None}}  # fmt: skip
        self._head = orjson.dumps(head).removesuffix(b"null}}")

    def __call__(self, raw: bytes, fields: dict[str, Any] | None = None) -> bytes:
        notification = orjson.loads(raw)
        if notification.get("object_type") == "hit" and raw.endswith(b"}"):
            host = orjson.dumps(notification.get("domain"))
            return self._head + raw[:-1] + b',"host":' + host + b"}}}"
        return orjson.dumps(envelope(notification, self.who, fields))


def wrap(raw: bytes, who: Identity, fields: dict[str, Any] | None = None) -> bytes:
    """One serialised notification's serialised envelope (see ``Wrapper``)."""
    return Wrapper(who)(raw, fields)


def envelope(
    notification: Notification, who: Identity, fields: dict[str, Any] | None = None
) -> Notification:
    """The envelope of one §5 notification; ``fields``: a vulnerability's line fields."""
    kind = notification.get("object_type")
    if kind == "hit":
        return {
            "summary": HIT_SUMMARY,
            "details": {
                "client_name": who.client_name,
                "cloud": who.cloud,
                "notification_type": "new_hits",
                "hit": {**notification, "host": notification.get("domain")},
            },
        }
    if kind == "vulnerability":
        return _vulnerability(notification, who, fields)
    notification_type = notification.get("notification_type")
    return {
        "summary": PREFIX + str(notification.get("summary")),
        "description": f"Notification type: {notification_type}\n\n"
        + str(notification.get("description")),
        "details": {
            "client_name": who.client_name,
            "cloud": who.cloud,
            "notification_type": notification_type,
            "time": notification.get("time"),
            **(notification.get("details") or {}),
        },
    }


def _vulnerability(
    notification: Notification, who: Identity, fields: dict[str, Any] | None
) -> Notification:
    link = notification.get("link")
    given = fields if fields is not None else {"id": _id_from_link(link)}
    vuln = {
        "domain": notification.get("domain"),
        "id": given.get("id"),
        "method": given.get("method"),
        "parameter": given.get("parameter"),
        "path": given.get("path"),
        "title": notification.get("title"),
        "discovered_by": given.get("discovered_by"),
        "threat": notification.get("threat"),
        "type": notification.get("type"),
    }
    return {
        "summary": VULNERABILITY_SUMMARY,
        "description": describe_vulnerability(vuln, link, who),
        "details": {
            "client_name": who.client_name,
            "cloud": who.cloud,
            "notification_type": "vuln",
            "vuln_link": link,
            "vuln": vuln,
        },
    }


def describe_vulnerability(vuln: dict[str, Any], link: Any, who: Identity) -> str:
    """Wallarm's text: a ``Key: value`` line per field, empty after ``: `` when null;
    it ends with a newline, as Wallarm's does."""

    def line(key: str, value: Any) -> str:
        return f"{key}: {'' if value is None else value}"

    return "\n".join(
        [
            "Notification type: vuln",
            "",
            "New vulnerability was detected in your system.",
            "",
            line("ID", vuln["id"]),
            line("Title", vuln["title"]),
            line("Domain", vuln["domain"]),
            line("Path", vuln["path"]),
            line("Method", vuln["method"]),
            line("Discovered by", vuln["discovered_by"]),
            line("Parameter", vuln["parameter"]),
            line("Type", vuln["type"]),
            line("Threat", vuln["threat"]),
            "",
            line("More details", link),
            "",
            "",
            line("Client", who.client_name),
            line("Cloud", who.cloud),
            "",
        ]
    )


def _id_from_link(link: Any) -> int | None:
    """The object id at the end of a §5 ``link`` (``.../object/282157``), for a
    vulnerability kept without its line fields (queued again from a dead letter)."""
    if not isinstance(link, str):
        return None
    tail = link.rpartition("/object/")[2]
    return int(tail) if tail.isascii() and tail.isdigit() else None
