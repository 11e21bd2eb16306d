"""Standard Webhooks v1 signatures: ``v1,BASE64(HMAC-SHA256(key, id.timestamp.body))``.

A secret is ``whsec_`` followed by base64 of the key (the form Standard Webhooks
libraries generate); a secret without that prefix is used as raw UTF-8 key bytes. With
several secrets (rotation), one signature per secret, separated by spaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    if secret.startswith(PREFIX):
        return base64.b64decode(secret[len(PREFIX) :])
    return secret.encode("utf-8")


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode("ascii"))
    return " ".join(signatures)
