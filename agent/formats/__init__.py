"""Input formats: which schema a decoded line is checked against, and how it is mapped.

A format turns one decoded JSON value into ``(event_type, notification)`` or raises
``RejectedLine``. Adding a format means one module here and one entry in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: The notification object types (CONTRACT §5), also the ``event_type`` metric label values.
EVENT_TYPES = ("hit", "vulnerability", "system", "scope")

#: A hit's ``block_status`` and a vulnerability's ``threat``: the enums of their schemas
#: (``schemas/hit.schema.json``, ``schemas/vulnerability.schema.json``; a test holds them
#: equal). A webhook's ``filter`` may name only these.
BLOCK_STATUSES = ("blocked", "monitored", "passed")
THREATS = ("Low", "Medium", "High")

#: The attack types a filter may name (``webhooks[].filter.attack_types``): Wallarm's
#: attack codes (its "Attack and vulnerability types" list, attacks only), and those the
#: ModSecurity format gives that Wallarm has no code for (``protocol``, ``dos``, ``rfi``,
#: ``session_fixation``; a test holds every type of its tables to this list). A native
#: hit's ``attack_type`` is any lower-case word, so a newer node's new type is still
#: delivered; a filter can name it once it is listed here.
ATTACK_TYPES = (
    "sqli",
    "xss",
    "rce",
    "ptrav",
    "crlf",
    "redir",
    "nosqli",
    "ldapi",
    "xxe",
    "ssti",
    "ssi",
    "ssrf",
    "mail_injection",
    "scanner",
    "dirbust",
    "brute",
    "bola",
    "infoleak",
    "vpatch",
    "overlimit_res",
    "data_bomb",
    "invalid_xml",
    "logic_bomb",
    "mass_assignment",
    "graphql_attacks",
    "credential_stuffing",
    "api_abuse",
    "account_takeover",
    "scraping",
    "security_crawlers",
    "protocol",
    "dos",
    "rfi",
    "session_fixation",
)


@dataclass(frozen=True)
class MappingContext:
    """What a mapping needs beyond the line itself."""

    console_url: str = "https://my.wallarm.com"


class FastHit(Protocol):
    """A hit notification the fast path built: a msgspec Struct, which
    ``agent.formats.native_fast.encode_into`` writes as the bytes orjson writes for the
    dict ``convert`` gives, with the facts filters judge as attributes."""

    block_status: str
    type: str
    domain: str


class EventFormat(Protocol):
    """One input format (``native``, ``modsecurity``)."""

    name: str

    def convert(self, obj: Any, ctx: MappingContext) -> tuple[str, dict[str, Any] | None]:
        """Classify, validate and map one decoded line.

        Returns the event type and the notification object, or ``None`` as the object
        when the line is valid but carries nothing to send (a ModSecurity transaction
        without rule messages). Raises ``RejectedLine`` with reason ``unknown_event`` or
        ``invalid_schema`` (and the event type, when known).
        """
        ...

    def fast_hit(self, line: bytes) -> FastHit | None:
        """The fast path: the notification of a hit line this format decodes, validates
        and maps in one typed pass, exactly as ``convert`` would, or ``None`` for any line
        it does not take (then ``convert`` on the decoded line decides, and explains).
        A ``\\r`` at the end of the line is white space to it."""
        ...


def _native() -> EventFormat:
    from agent.formats.native import NativeFormat

    return NativeFormat()


def _modsecurity() -> EventFormat:
    from agent.formats.modsecurity import ModSecurityFormat

    return ModSecurityFormat()


FORMATS: dict[str, Callable[[], EventFormat]] = {
    "native": _native,
    "modsecurity": _modsecurity,
}


def load_format(name: str) -> EventFormat:
    """A ready format by name; schemas are loaded and compiled here, once."""
    return FORMATS[name]()
