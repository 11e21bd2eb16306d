"""How durations, sizes and listen addresses are written in the config, both ways.

Reading: ``parse_duration`` (seconds, or ``250ms``/``15s``/``5m``/``24h``), ``parse_size``
(bytes, or ``64KiB``/``1MiB``/``1GiB``: ``KiB``..``TiB`` are powers of 1024, ``KB``..``TB``
powers of 1000) and ``parse_listen_address`` (``HOST:PORT``, ``[::1]:PORT``); each raises
``ValueError`` with a message that never quotes the value.

Writing (for defaults shown in the schema and sizes in messages): ``format_duration``
(``0.2`` -> ``200ms``), ``format_size`` (``1048576`` -> ``1MiB``), ``format_listen_address``.
"""

from __future__ import annotations

import ipaddress
import math
import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_SIZE = re.compile(r"([0-9]+)(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?")
_SIZE_UNITS = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": 1024 * GIB}
_SIZE_UNITS.update(KB=10**3, MB=10**6, GB=10**9, TB=10**12)
_LISTEN = re.compile(r"(?:\[([^\]]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})")

#: The patterns the JSON Schema holds for the same forms (parse_* is the stricter check).
#: Each ends ``(?!\n)$``: Python's ``$`` also matches before a final newline, ECMA's and
#: jsonschema_rs's do not, and both validators must give one verdict.
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)(?!\n)$"
SIZE_PATTERN = r"^[0-9]+(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?(?!\n)$"
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}(?!\n)$"


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


def format_duration(seconds: float) -> str | float:
    """The shortest exact way to write ``seconds``: ``200ms``, ``15s``, ``5m``, ``24h``."""
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    milliseconds = seconds * 1000
    if milliseconds == int(milliseconds):
        return f"{int(milliseconds)}ms"
    return seconds


def format_size(size: int) -> str:
    """The largest binary unit that writes ``size`` exactly: ``1KiB``, ``2MiB``, ``512``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def format_listen_address(host: str, port: int) -> str:
    """(host, port) -> ``HOST:PORT``, an IPv6 host between brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
