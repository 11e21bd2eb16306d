"""Keeping a webhook's configured header values out of the answers tailhook keeps.

Some receivers echo the request's headers in their answer (a debugging endpoint, an
error page listing what it got). The first KiB of an answer goes to the dead-letter file
and the log, so every configured header value is replaced by ``[REDACTED]`` there first:

- each value whole, and for a value ``SCHEME CREDENTIALS`` (``Bearer tok``, ``Basic
  dXNlcjpwdw==``) the credentials alone; for ``Basic``, also the decoded ``user:password``
  and the password (a part on its own from 6 characters on);
- as sent (Latin-1), as UTF-8, and JSON-escaped (``\\"``, ``\\\\``, ``\\/``, ``\\u00e9`` in
  either case of hex), the ways an echo writes them;
- in the first ``scan_bytes`` of the body, before it is cut to ``keep`` bytes, so a value
  running across the cut is caught whole; and a value cut short at the end of what was
  read (its first 4 bytes or more) is redacted too.

Every value is redacted, however short: a short value may be a secret as well, and a
body with ``[REDACTED]`` in odd places is better than a leaked credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable

MARK = b"[REDACTED]"
#: A value cut at the end of what was read is redacted from this many bytes on.
MIN_CUT_BYTES = 4
#: A part of a value (the credentials after the scheme, a Basic password) is redacted on
#: its own from this length on; the whole value always is.
MIN_PART_CHARS = 6


def secret_values(headers: Iterable[tuple[str, str]]) -> list[str]:
    """What to keep out of kept answers, from a webhook's configured headers."""
    values: list[str] = []
    for _name, value in headers:
        values.append(value)
        scheme, _, credentials = value.partition(" ")
        credentials = credentials.strip()
        if scheme.isalpha() and credentials:
            parts = [credentials]
            if scheme.lower() == "basic":
                parts += _basic_parts(credentials)
            values += [part for part in parts if len(part) >= MIN_PART_CHARS]
    return [value for value in values if value]


def _basic_parts(token: str) -> list[str]:
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    _user, _, password = decoded.partition(":")
    return [decoded, password]


def written_forms(value: str) -> set[bytes]:
    """The byte strings ``value`` may appear as in an answer's body."""
    escaped = json.dumps(value)[1:-1]  # \" \\ \t \u00e9 ...
    unescaped_utf8 = json.dumps(value, ensure_ascii=False)[1:-1]
    upper_hex = re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), escaped)
    forms = {value.encode("utf-8"), escaped.encode(), upper_hex.encode()}
    forms.add(unescaped_utf8.encode("utf-8"))
    forms |= {form.replace(b"/", b"\\/") for form in forms}
    if all(ord(char) < 0x100 for char in value):  # else never sent: check-config refuses it
        forms.add(value.encode("latin-1"))
    return forms


class Redactor:
    """Replaces a webhook's header values in the answers it keeps."""

    def __init__(self, values: Iterable[str]) -> None:
        forms = sorted({f for v in values for f in written_forms(v)}, key=len, reverse=True)
        self._forms = forms
        self._pattern = re.compile(b"|".join(re.escape(f) for f in forms)) if forms else None

    def redact(self, data: bytes, keep: int) -> bytes:
        """``data`` (the start of a body) with every value replaced, cut to ``keep`` bytes."""
        if self._pattern is None:
            return data[:keep]
        redacted = self._pattern.sub(MARK, data)
        return self._cut_value_at_end(redacted)[:keep]

    def _cut_value_at_end(self, data: bytes) -> bytes:
        """``data`` without a value's first bytes at its very end (the rest unread)."""
        for form in self._forms:
            for length in range(len(form) - 1, MIN_CUT_BYTES - 1, -1):
                if data.endswith(form[:length]):
                    return data[:-length] + MARK
        return data
