"""How config values are written, and the rules a JSON Schema cannot say.

Units: ``parse_duration`` (seconds, or ``250ms``/``15s``/``5m``/``24h``), ``parse_size``
(bytes, or ``64KiB``/``1MiB``/``1GiB``: ``KiB``..``TiB`` are powers of 1024, ``KB``..``TB``
powers of 1000) and ``parse_listen_address`` (``HOST:PORT``, ``[::1]:PORT``).

Rules (``rule_problems``): webhook URLs (http or https with a host; https unless the host is
loopback or ``allow_http: true``; a ``user:password@`` part only without an
``Authorization`` header, since it becomes one: ``split_userinfo``), duplicate source and
webhook names, readable TLS files, ``key_file`` only with ``cert_file``, timeouts and
``initial_backoff`` more than 0, ``initial_backoff`` not past ``max_backoff``,
``max_line_bytes`` at least 1 KiB, headers tailhook sets itself, header values without
line breaks and in Latin-1 (all HTTP can carry), a ``whsec_`` signing secret holding
base64. They run on the raw data beside the schema, so one load reports every
problem; where the schema already refused a value, its problem is the one reported.
Header values, secrets and URLs are never quoted in a message.

A file source glob must not be able to match a file inside ``state_dir``
(``glob_reaches_into``): tailhook never tails its own output (rejected lines, dead
letters, the spool).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import glob
import ipaddress
import math
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

from agent.config_document import Loc, Located

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DEFAULT_STATE_DIR = "/var/lib/tailhook"

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_SIZE = re.compile(r"([0-9]+)(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?")
_SIZE_UNITS = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": 1024 * GIB}
_SIZE_UNITS.update(KB=10**3, MB=10**6, GB=10**9, TB=10**12)
_LISTEN = re.compile(r"(?:\[([^\]]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})")


def parse_duration(value: object) -> float:
    """Seconds from seconds or a string with a unit: ``250ms``, ``15s``, ``5m``, ``24h``."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        number, unit = match.groups()
        seconds = float(number) / 1000 if unit == "ms" else float(number) * _DURATION_UNITS[unit]
    else:
        raise ValueError("must be a duration: seconds, or a string like 250ms, 15s, 5m, 24h")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite number of seconds, 0 or more")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a whole number or a string with a unit: ``64KiB``, ``1MiB``, ``1GiB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
    raise ValueError("must be a size: bytes, or a string like 64KiB, 1MiB, 1GiB")


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port), the IPv6 host without brackets."""
    match = _LISTEN.fullmatch(value)
    if not match:
        raise ValueError("must be HOST:PORT, like 127.0.0.1:9717 or [::1]:9717")
    ipv6, host, port = match.groups()
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            raise ValueError("has an invalid IPv6 address between [ and ]") from None
    if int(port) > 65535:
        raise ValueError("port must be 0 to 65535")
    return ipv6 or host, int(port)


_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def rule_problems(data: dict[str, Any]) -> list[Located]:
    """Every problem the schema cannot find in ``data`` (the config after substitution)."""
    out: list[Located] = []
    if isinstance(data.get("console_url"), str):
        out += _url_problems(("console_url",), data["console_url"], https_only=False)
    listen = _mapping(data.get("metrics")).get("listen")
    if isinstance(listen, str):
        _check(out, ("metrics", "listen"), parse_listen_address, listen)
    _duration(out, ("shutdown_timeout",), data.get("shutdown_timeout"))
    # Below 2 MiB the spool's WAL and reserve leave no room (agent.spool.capacity).
    _size(out, ("spool", "max_bytes"), _mapping(data.get("spool")).get("max_bytes"), 2 * MIB)
    sources = _items(data.get("sources"))
    for i, source in sources:
        _size(out, ("sources", i, "max_line_bytes"), source.get("max_line_bytes"), KIB)
        _duration(out, ("sources", i, "rotate_wait"), source.get("rotate_wait"))
        _duration(out, ("sources", i, "idle_timeout"), source.get("idle_timeout"), positive=True)
        out += _state_dir_glob_problems(("sources", i), source, data.get("state_dir"))
    webhooks = _items(data.get("webhooks"))
    for i, webhook in webhooks:
        out += _webhook_problems(("webhooks", i), webhook)
    return out + _duplicate_names("sources", sources) + _duplicate_names("webhooks", webhooks)


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


def _state_dir_glob_problems(loc: Loc, source: dict[str, Any], state_dir: Any) -> list[Located]:
    state_dir = DEFAULT_STATE_DIR if state_dir is None else state_dir
    paths = source.get("paths") if source.get("type") == "file" else None
    if not isinstance(state_dir, str) or not isinstance(paths, list):
        return []
    return [
        (
            (*loc, "paths", j),
            f"can match files inside state_dir {state_dir}; tailhook never "
            "reads its own files (rejected lines, dead letters, the spool)",
        )
        for j, pattern in enumerate(paths)
        if isinstance(pattern, str) and pattern and glob_reaches_into(pattern, state_dir)
    ]


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


def _webhook_problems(loc: Loc, webhook: dict[str, Any]) -> list[Located]:
    out: list[Located] = []
    if isinstance(webhook.get("url"), str):
        allow_http = webhook.get("allow_http") is True
        out += _url_problems((*loc, "url"), webhook["url"], https_only=not allow_http)
        out += _userinfo_problems((*loc, "url"), webhook["url"], _mapping(webhook.get("headers")))
    for key in ("request_timeout", "connect_timeout"):
        _duration(out, (*loc, key), webhook.get(key), positive=True)
    batch, retry = _mapping(webhook.get("batch")), _mapping(webhook.get("retry"))
    _size(out, (*loc, "batch", "max_bytes"), batch.get("max_bytes"), 1)
    _duration(out, (*loc, "batch", "max_wait"), batch.get("max_wait"))
    initial = _duration(out, (*loc, "retry", "initial_backoff"), retry.get("initial_backoff"), True)
    longest = _duration(out, (*loc, "retry", "max_backoff"), retry.get("max_backoff"))
    _duration(out, (*loc, "retry", "max_elapsed"), retry.get("max_elapsed"))
    if initial is not None and longest is not None and initial > longest:
        out.append(((*loc, "retry", "initial_backoff"), "must not be longer than max_backoff"))
    out += _tls_problems((*loc, "tls"), _mapping(webhook.get("tls")))
    out += _header_problems((*loc, "headers"), _mapping(webhook.get("headers")))
    out += _signing_problems((*loc, "signing"), _mapping(webhook.get("signing")))
    return out


def _tls_problems(loc: Loc, tls: dict[str, Any]) -> list[Located]:
    out: list[Located] = []
    for key in ("ca_file", "cert_file", "key_file"):
        if isinstance(tls.get(key), str) and tls[key]:
            _check(out, (*loc, key), _readable_file, tls[key])
    if "key_file" in tls and "cert_file" not in tls:
        out.append(((*loc, "key_file"), "needs cert_file, the certificate of this key"))
    return out


def _userinfo_problems(loc: Loc, url: str, headers: dict[str, Any]) -> list[Located]:
    # Never quote the URL or the credentials.
    try:
        userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    except ValueError:
        return []  # reported by _url_problems
    if not at:
        return []
    if not userinfo:
        return [(loc, "has an empty user:password@ part")]
    if any(name.lower() == "authorization" for name in headers):
        reason = (
            "has a user:password@ part, which becomes an Authorization header, and headers"
            " set Authorization too: give the credentials once"
        )
        return [(loc, reason)]
    return []


def _header_problems(loc: Loc, headers: dict[str, Any]) -> list[Located]:
    # Values may be credentials: a problem with one never quotes it.
    out: list[Located] = []
    seen: set[str] = set()
    for name, value in headers.items():
        if name.lower() in _RESERVED_HEADERS:
            out.append(((*loc, name), "is set by tailhook and cannot be configured"))
        elif name.lower() in seen:
            out.append(((*loc, name), "is given twice (header names ignore case)"))
        elif isinstance(value, str) and _CONTROL.search(value):
            out.append(((*loc, name), "value must not contain line breaks or control characters"))
        elif isinstance(value, str) and not _is_latin1(value):
            reason = "value must be Latin-1 text: HTTP cannot send other characters in a header"
            out.append(((*loc, name), reason))
        seen.add(name.lower())
    return out


def _signing_problems(loc: Loc, signing: dict[str, Any]) -> list[Located]:
    secrets = [((*loc, "secret"), signing.get("secret"))]
    if isinstance(signing.get("secrets"), list):
        secrets = [((*loc, "secrets", i), s) for i, s in enumerate(signing["secrets"])]
    return [
        (where, "must be whsec_ then the key in base64 (or a raw key without whsec_)")
        for where, secret in secrets
        if isinstance(secret, str) and secret and not _is_webhook_secret(secret)
    ]


def _url_problems(loc: Loc, url: str, *, https_only: bool) -> list[Located]:
    # Never quote the URL: its query or user part may hold a token.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return [(loc, "is not a valid URL")]
    if parts.scheme not in ("http", "https") or any(c.isspace() for c in url):
        return [(loc, "must be an http or https URL")]
    if not parts.hostname:
        return [(loc, "has no host")]
    if https_only and parts.scheme == "http" and not is_loopback(parts.hostname):
        reason = "must be https (http only to a loopback host, or with allow_http: true)"
        return [(loc, reason)]
    return []


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_latin1(text: str) -> bool:
    return all(ord(char) < 0x100 for char in text)


def _is_webhook_secret(secret: str) -> bool:
    """``whsec_`` then base64 of the key, or a raw key without it (as agent.sinks.signing)."""
    if not secret.startswith("whsec_"):
        return True
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) > 0
    except binascii.Error:
        return False


def _readable_file(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _duplicate_names(key: str, items: list[tuple[int, dict[str, Any]]]) -> list[Located]:
    out: list[Located] = []
    first: dict[str, int] = {}
    for i, item in items:
        name = item.get("name")
        if isinstance(name, str) and name in first:
            out.append(((key, i, "name"), f"{name!r} is also the name of {key}[{first[name]}]"))
        elif isinstance(name, str):
            first[name] = i
    return out


def _check(out: list[Located], loc: Loc, check: Callable[[Any], object], value: Any) -> None:
    try:
        check(value)
    except ValueError as exc:
        out.append((loc, str(exc)))


def _duration(out: list[Located], loc: Loc, value: Any, positive: bool = False) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        out.append((loc, str(exc)))
        return None
    if positive and seconds == 0:
        out.append((loc, "must be more than 0"))
    return seconds


def _size(out: list[Located], loc: Loc, value: Any, minimum: int) -> None:
    if value is not None:
        try:
            if parse_size(value) < minimum:
                shown = {KIB: "1KiB", 2 * MIB: "2MiB"}.get(minimum, str(minimum))
                out.append((loc, f"must be at least {shown}"))
        except ValueError as exc:
            out.append((loc, str(exc)))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]
