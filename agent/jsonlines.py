"""JSON that commands print for a person or a pipe (``validate --print``, ``dead-letter
list``): one value a line, safe to land in a terminal.

The values hold what attackers sent (a hit's payloads) and what receivers answered, so
every control character is escaped, as JSON allows: JSON already escapes C0 (ESC among
them), and ``json_line`` escapes DEL and the C1 controls (U+0080..U+009F, among them the
one-character CSI, U+009B) that orjson writes as they are. The output stays valid JSON,
equal to the value once parsed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

#: DEL, and U+0080..U+009F in UTF-8 (0xC2 is only ever a lead byte in valid UTF-8).
_UNSAFE = re.compile(rb"\x7f|\xc2[\x80-\x9f]")


def _escape(found: re.Match[bytes]) -> bytes:
    code = ord(found.group().decode("utf-8"))
    return b"\\u%04x" % code


def json_line(value: Any) -> bytes:
    """``value`` as one line of JSON, newline included, every control character escaped."""
    return _UNSAFE.sub(_escape, orjson.dumps(value)) + b"\n"


def quoted(text: str) -> str:
    """``text`` as a JSON string (quoted, escaped) to print inside a line of prose."""
    return json_line(text)[:-1].decode("utf-8")
