"""The rules across keys: what one key's kind cannot say alone.

Each rule is named for what it demands and is attached to its section in
``agent.config.keys``; it gets the section's location and raw mapping (after ``${NAME}``
substitution, before conversion, possibly invalid to the schema: it checks types
itself and leaves a wrong type to the schema) and yields problems. Where a key's kind
already found a problem, that one is reported.

- a webhook: ``https_unless_allowed`` (http only to a loopback host or with
  ``allow_http: true``), ``credentials_given_once`` (a URL's ``user:password@`` becomes an
  ``Authorization`` header, so not both), ``headers_tailhook_can_send`` (not one tailhook
  sets, not twice, no line breaks, Latin-1);
- ``retry``: ``backoff_in_order``; ``tls``: ``tls_files_readable``,
  ``key_file_has_cert_file``; ``signing``: ``secrets_are_webhook_secrets``;
- the whole file: ``names_are_unique`` (sources; webhooks), ``globs_stay_out_of_state_dir``
  (tailhook never tails its own output: rejected lines, dead letters, the spool).

Also here: ``credentials_from_url`` (the webhook section's ``finish``: the URL's
credentials leave it for the header) and ``warnings`` (worth saying, not invalid).
Header values, secrets and URLs are never quoted in a message.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import glob
import ipaddress
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

from agent.config.document import Loc, Located
from agent.config.kinds import split_url, url_problem
from agent.config.model import DEFAULT_STATE_DIR
from agent.config.units import parse_duration

if TYPE_CHECKING:
    from agent.config.model import Config

_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --- a webhook ---------------------------------------------------------------------------


def https_unless_allowed(loc: Loc, webhook: dict[str, Any]) -> Iterator[Located]:
    url = webhook.get("url")
    if (
        not isinstance(url, str)
        or url_problem(url) is not None
        or webhook.get("allow_http") is True
    ):
        return  # not a URL: the kind's problem
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        reason = "must be https (http only to a loopback host, or with allow_http: true)"
        yield (*loc, "url"), reason


def credentials_given_once(loc: Loc, webhook: dict[str, Any]) -> Iterator[Located]:
    url, headers = webhook.get("url"), _mapping(webhook.get("headers"))
    parts = split_url(url) if isinstance(url, str) else None
    if parts is None:
        return  # not a URL: the kind's problem
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at:
        return
    if not userinfo:
        yield (*loc, "url"), "has an empty user:password@ part"
    elif any(name.lower() == "authorization" for name in headers):
        reason = (
            "has a user:password@ part, which becomes an Authorization header, and headers"
            " set Authorization too: give the credentials once"
        )
        yield (*loc, "url"), reason


def headers_tailhook_can_send(loc: Loc, webhook: dict[str, Any]) -> Iterator[Located]:
    seen: set[str] = set()
    for name, value in _mapping(webhook.get("headers")).items():
        where = (*loc, "headers", name)
        if name.lower() in _RESERVED_HEADERS:
            yield where, "is set by tailhook and cannot be configured"
        elif name.lower() in seen:
            yield where, "is given twice (header names ignore case)"
        elif isinstance(value, str) and _CONTROL.search(value):
            yield where, "value must not contain line breaks or control characters"
        elif isinstance(value, str) and not all(ord(char) < 0x100 for char in value):
            yield where, "value must be Latin-1 text: HTTP cannot send other characters in a header"
        seen.add(name.lower())


def backoff_in_order(loc: Loc, retry: dict[str, Any]) -> Iterator[Located]:
    if "initial_backoff" not in retry or "max_backoff" not in retry:
        return
    try:
        initial, longest = (
            parse_duration(retry[key]) for key in ("initial_backoff", "max_backoff")
        )
    except ValueError:
        return  # the kind's problem
    if initial > longest:
        yield (*loc, "initial_backoff"), "must not be longer than max_backoff"


def tls_files_readable(loc: Loc, tls: dict[str, Any]) -> Iterator[Located]:
    for key in ("ca_file", "cert_file", "key_file"):
        path = tls.get(key)
        if isinstance(path, str) and path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                yield (*loc, key), f"cannot read {path}: {exc.strerror or exc}"


def key_file_has_cert_file(loc: Loc, tls: dict[str, Any]) -> Iterator[Located]:
    if "key_file" in tls and "cert_file" not in tls:
        yield (*loc, "key_file"), "needs cert_file, the certificate of this key"


def secrets_are_webhook_secrets(loc: Loc, signing: dict[str, Any]) -> Iterator[Located]:
    secrets = [((*loc, "secret"), signing.get("secret"))]
    if isinstance(signing.get("secrets"), list):
        secrets = [((*loc, "secrets", i), s) for i, s in enumerate(signing["secrets"])]
    for where, secret in secrets:
        if isinstance(secret, str) and secret and not _is_webhook_secret(secret):
            yield where, "must be whsec_ then the key in base64 (or a raw key without whsec_)"


# --- the whole file --------------------------------------------------------------------------


def names_are_unique(loc: Loc, data: dict[str, Any]) -> Iterator[Located]:
    """Within sources, and within webhooks (a source and a webhook may share a name)."""
    for key in ("sources", "webhooks"):
        first: dict[str, int] = {}
        for i, item in _items(data.get(key)):
            name = item.get("name")
            if isinstance(name, str) and name in first:
                yield (*loc, key, i, "name"), f"{name!r} is also the name of {key}[{first[name]}]"
            elif isinstance(name, str):
                first[name] = i


def globs_stay_out_of_state_dir(loc: Loc, data: dict[str, Any]) -> Iterator[Located]:
    state_dir = data.get("state_dir")
    state_dir = DEFAULT_STATE_DIR if state_dir is None else state_dir
    if not isinstance(state_dir, str):
        return
    for i, source in _items(data.get("sources")):
        paths = source.get("paths") if source.get("type") == "file" else None
        for j, pattern in enumerate(paths if isinstance(paths, list) else []):
            if isinstance(pattern, str) and pattern and glob_reaches_into(pattern, state_dir):
                reason = (
                    f"can match files inside state_dir {state_dir}; tailhook never "
                    "reads its own files (rejected lines, dead letters, the spool)"
                )
                yield (*loc, "sources", i, "paths", j), reason


def glob_reaches_into(pattern: str, directory: str) -> bool:
    """Whether the glob ``pattern`` can match a path inside ``directory``. Both are made
    absolute and compared a component at a time, as glob's ``*`` never crosses a ``/``
    and never matches a name starting with ``.`` unless the pattern's does."""
    pattern_parts = _components(pattern)
    directory_parts = _components(directory)
    if len(pattern_parts) <= len(directory_parts):
        return False
    return all(map(_component_matches, directory_parts, pattern_parts))


def _components(path: str) -> list[str]:
    return [part for part in os.path.abspath(path).split(os.sep) if part]


def _component_matches(name: str, part: str) -> bool:
    if not glob.has_magic(part):
        return name == part
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


# --- building and warnings ---------------------------------------------------------------------


def credentials_from_url(fields: dict[str, Any]) -> dict[str, Any]:
    """A ``user:password@`` in the URL becomes an Authorization header, and leaves the
    URL, so that no repr or log of it carries the password."""
    url, basic = split_userinfo(fields["url"])
    if basic is None:
        return fields
    headers = (*fields.get("headers", ()), ("Authorization", basic))
    return fields | {"url": url, "headers": headers}


def split_userinfo(url: str) -> tuple[str, str | None]:
    """The URL without its ``user:password@`` part, and that part as the value of an
    ``Authorization: Basic`` header (percent-decoded, UTF-8, as RFC 7617 suggests), or
    None when the URL has none."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    credentials = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
    stripped = urlunsplit(parts._replace(netloc=hostport))
    return stripped, "Basic " + base64.b64encode(credentials).decode("ascii")


def warnings(config: Config) -> tuple[str, ...]:
    """What is worth saying about a valid config: a webhook that sends nothing, or
    sends without authenticating the server or without encryption."""
    out = []
    for i, webhook in enumerate(config.webhooks):
        if not webhook.events:
            out.append(f"webhooks[{i}].events: empty, this webhook sends nothing")
        if not webhook.tls.verify:
            out.append(f"webhooks[{i}].tls.verify: false, the server is not authenticated")
        url = urlsplit(webhook.url)
        if url.scheme == "http" and not is_loopback(url.hostname or ""):
            out.append(f"webhooks[{i}].url: plain http, events and headers travel unencrypted")
    return tuple(out)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_webhook_secret(secret: str) -> bool:
    """``whsec_`` then base64 of the key, or a raw key without it (as agent.sinks.signing)."""
    if not secret.startswith("whsec_"):
        return True
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) > 0
    except binascii.Error:
        return False


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]
