"""One HTTP request to one webhook, with its TLS settings and timeouts.

requests' own timeouts bound connecting (TLS handshake included) and each socket read;
``request_timeout`` must bound the whole exchange, so the response body is read in
chunks against a deadline and a server that trickles its answer still times out.
Failures before a status arrives become ``DeliveryError`` with the metric label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
import urllib3.exceptions

from agent.config import WebhookConfig
from agent.errors import DeliveryError

RESPONSE_KEEP_BYTES = 1024
READ_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body_head: bytes  # the first KiB of the response body


class Transport:
    """A connection pool and TLS settings for one webhook."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        session = requests.Session()
        session.trust_env = False  # no proxies or netrc from the environment
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        tls = config.tls
        if not tls.verify:
            # The operator chose this and check-config said so; a warning per request
            # would only bury the logs.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        session.verify = tls.ca_file if (tls.verify and tls.ca_file) else tls.verify
        if tls.cert_file:
            session.cert = (tls.cert_file, tls.key_file) if tls.key_file else tls.cert_file
        self.session = session

    def send(self, body: bytes, headers: dict[str, str]) -> Answer:
        config = self.config
        deadline = time.monotonic() + config.request_timeout
        try:
            response = self.session.request(
                config.method,
                config.url,
                data=body,
                headers=headers,
                timeout=(config.connect_timeout, config.request_timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.SSLError as exc:
            raise DeliveryError("tls", _describe(exc)) from exc
        except requests.exceptions.Timeout as exc:
            raise DeliveryError("timeout", _describe(exc)) from exc
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise DeliveryError("connection", _describe(exc)) from exc
        with response:
            head = self._read_body(response, deadline)
            return Answer(response.status_code, dict(response.headers), head)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """Read the whole body (keeping its first KiB) before ``deadline``."""
        raw = response.raw
        kept = bytearray()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeliveryError(
                        "timeout",
                        f"the response did not finish within {self.config.request_timeout}s",
                    )
                sock = getattr(raw.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(remaining)
                chunk = raw.read1(READ_CHUNK, decode_content=False)
                if not chunk:
                    return bytes(kept)
                if len(kept) < RESPONSE_KEEP_BYTES:
                    kept += chunk[: RESPONSE_KEEP_BYTES - len(kept)]
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise DeliveryError("timeout", "reading the response timed out") from exc
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError, OSError) as exc:
            raise DeliveryError("connection", f"reading the response failed: {exc}") from exc

    def close(self) -> None:
        self.session.close()


def _describe(exc: requests.exceptions.RequestException) -> str:
    """The innermost reason, which names no header or secret."""
    reason: BaseException = exc
    while reason.__cause__ is not None or (
        reason.args and isinstance(reason.args[0], BaseException)
    ):
        nxt = reason.__cause__ or reason.args[0]
        if not isinstance(nxt, BaseException) or nxt is reason:
            break
        reason = nxt
    text = str(reason) or type(reason).__name__
    return text[:300]
