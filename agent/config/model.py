"""The configuration as the agent sees it: frozen dataclasses, one per mapping of the file.

Written by hand, because they are the types the rest of the agent reads
(``webhook.batch.max_wait: float``, checked by mypy). Each field is filled by one key of
``agent.config.keys`` (or a section: ``tls``, ``batch``, ...), converted by that key's
kind; a field's default here is the key's default (the schema shows it too). A test
holds the two to each other: every field is filled by a key, every key fills a field.

Values are converted: durations float seconds, sizes int bytes, ``socket_mode`` an int
(``"0660"`` -> 0o660), ``metrics.listen`` host and port, ``signing.secret`` a one-secret
tuple, ``headers`` a tuple of pairs, ``events`` a frozenset, ``state_dir`` a Path,
``console_url`` without a trailing slash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.units import GIB, MIB

DEFAULT_STATE_DIR = "/var/lib/tailhook"


@dataclass(frozen=True)
class FileSourceConfig:
    name: str
    paths: tuple[str, ...]
    format: str = "native"  # native | modsecurity
    start_at: str = "beginning"  # beginning | end
    max_line_bytes: int = 1 * MIB
    rotate_wait: float = 5.0
    watch: str = "auto"  # auto | inotify | poll
    workers: int = 1  # processes converting a burst (agent.pipeline.workers)
    type: str = "file"


@dataclass(frozen=True)
class SocketSourceConfig:
    name: str
    path: str
    mode: str = "stream"  # stream | datagram
    socket_mode: int = 0o660
    max_connections: int = 64
    format: str = "native"
    max_line_bytes: int = 1 * MIB
    idle_timeout: float = 300.0  # a stream client silent this long is closed
    type: str = "unix_socket"


SourceConfig = FileSourceConfig | SocketSourceConfig


@dataclass(frozen=True)
class TLSConfig:
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BatchConfig:
    max_events: int = 500
    max_bytes: int = 1 * MIB
    max_wait: float = 0.2


@dataclass(frozen=True)
class RetryConfig:
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    max_elapsed: float = 86400.0


@dataclass(frozen=True)
class SigningConfig:
    # Secrets are never printed: repr=False keeps them out of reprs and logs.
    secrets: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True)
class FilterConfig:
    """A webhook's ``filter``: None is a condition not given."""

    block_status: frozenset[str] | None = None
    attack_types: frozenset[str] | None = None
    domains: tuple[str, ...] | None = None  # shell-style globs
    threats: frozenset[str] | None = None

    @property
    def given(self) -> bool:
        """Whether any condition is given (else every event passes)."""
        return any(value is not None for value in dataclasses.astuple(self))


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    events: frozenset[str]
    method: str = "POST"  # POST | PUT
    # Header values may hold credentials: never in a repr.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tls: TLSConfig = TLSConfig()
    request_timeout: float = 15.0
    connect_timeout: float = 20.0
    enabled: bool = True
    allow_http: bool = False
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    signing: SigningConfig | None = None
    payload: str = "classic"  # classic | wallarm
    body: str = "json_array"  # json_array | ndjson
    filter: FilterConfig = FilterConfig()


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9717


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "json"  # json | text


@dataclass(frozen=True)
class SpoolConfig:
    max_bytes: int = 1 * GIB
    when_full: str = "block"  # block | drop_oldest


@dataclass(frozen=True)
class WallarmConfig:
    """The identity ``payload: wallarm`` envelopes carry; None: the default, filled in
    when used (``agent.formats.wallarm.identity_of``): the node's host name, and ``US``
    when ``console_url``'s host starts with ``us1.``, else ``EU``."""

    client_name: str | None = None
    cloud: str | None = None  # EU | US


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    console_url: str = "https://my.wallarm.com"
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    sources: tuple[SourceConfig, ...] = ()
    spool: SpoolConfig = SpoolConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    shutdown_timeout: float = 10.0
    wallarm: WallarmConfig = WallarmConfig()
    # Things worth saying that do not make the config invalid (a webhook with events: []).
    warnings: tuple[str, ...] = ()
