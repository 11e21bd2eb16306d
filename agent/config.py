"""The configuration: YAML -> frozen dataclasses, every check done at load time.

``load_config`` / ``parse_config`` read the YAML (safe loader), substitute ``${NAME}``
from the environment, validate against ``schemas/config.schema.json``, check the rules a
schema cannot say, and build the dataclasses below. Any problem raises ``ConfigError``
listing every problem found, each at its YAML path (``webhooks[1].url``); what is merely
worth saying (a webhook with ``events: []``) goes to ``Config.warnings``.

Values become: durations float seconds, sizes int bytes (``parse_duration``,
``parse_size``), ``socket_mode`` an int (``"0660"`` -> 0o660), ``metrics.listen`` a
``MetricsConfig``, ``signing.secret`` a one-secret ``SigningConfig``, ``headers`` a tuple
of pairs, ``events`` a frozenset, ``state_dir`` a Path, ``console_url`` without a trailing
slash. ``tls.cert_file`` alone is allowed (the PEM file then holds the key too). A webhook
URL's ``user:password@`` part leaves the URL and becomes an ``Authorization: Basic``
header (percent-decoded).

Reading and paths: ``agent.config_document``; units and the rules a schema cannot say:
``agent.config_rules``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config_document import kind_of, read_yaml, schema_problems, substitute_env
from agent.config_rules import (
    DEFAULT_STATE_DIR,
    GIB,
    KIB,
    MIB,
    is_loopback,
    parse_duration,
    parse_listen_address,
    parse_size,
    rule_problems,
    split_userinfo,
)
from agent.errors import ConfigError, Problem
from agent.schemas import python_validator

__all__ = [
    "GIB",
    "KIB",
    "MIB",
    "BatchConfig",
    "Config",
    "FileSourceConfig",
    "LogConfig",
    "MetricsConfig",
    "RetryConfig",
    "SigningConfig",
    "SocketSourceConfig",
    "SourceConfig",
    "SpoolConfig",
    "TLSConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]


@dataclass(frozen=True)
class FileSourceConfig:
    name: str
    paths: tuple[str, ...]
    format: str = "native"  # native | modsecurity
    start_at: str = "beginning"  # beginning | end
    max_line_bytes: int = 1 * MIB
    rotate_wait: float = 5.0
    watch: str = "auto"  # auto | inotify | poll
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
class Config:
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    console_url: str = "https://my.wallarm.com"
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    sources: tuple[SourceConfig, ...] = ()
    spool: SpoolConfig = SpoolConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    shutdown_timeout: float = 10.0
    # Things worth saying that do not make the config invalid (a webhook with events: []).
    warnings: tuple[str, ...] = ()


# --- loading -----------------------------------------------------------------------------


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, check and build the config at ``path``; ``env`` defaults to ``os.environ``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        problem = Problem("", f"{path} is not UTF-8 text (byte {exc.start})")
        raise ConfigError([problem]) from exc
    return parse_config(text, os.environ if env is None else env, source=str(path))


def parse_config(text: str, env: Mapping[str, str], *, source: str = "<config>") -> Config:
    """Check and build a config from YAML text; raises ConfigError with every problem."""
    document = read_yaml(text, source)
    substituted = substitute_env(document.data, env)
    data = substituted.data
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"must be a mapping of settings, not {kind_of(data)}"
        raise ConfigError([Problem("", f"{source} {what}")])
    problems = document.problems + substituted.problems
    problems += schema_problems(python_validator("config"), data, substituted.touched)
    problems += rule_problems(data)
    if problems:
        raise ConfigError(document.in_file_order(problems))
    config = _build(data)
    return replace(config, warnings=_warnings(config))


# --- building ------------------------------------------------------------------------------


def _fields(raw: Mapping[str, Any], **convert: Callable[[Any], Any]) -> dict[str, Any]:
    """The keys of ``raw`` named in ``convert``, converted: keyword arguments of a dataclass."""
    return {key: conv(raw[key]) for key, conv in convert.items() if key in raw}


def _as_is(value: Any) -> Any:
    return value


def _build(data: dict[str, Any]) -> Config:
    """The dataclasses from checked data; a key left out keeps the dataclass default."""
    config = _fields(
        data,
        state_dir=Path,
        console_url=lambda url: url.rstrip("/"),
        shutdown_timeout=parse_duration,
        metrics=lambda m: (
            MetricsConfig(*parse_listen_address(m["listen"])) if "listen" in m else MetricsConfig()
        ),
        log=lambda log: LogConfig(**log),
        spool=lambda s: SpoolConfig(**_fields(s, max_bytes=parse_size, when_full=_as_is)),
        sources=lambda sources: tuple(_build_source(s) for s in sources),
        webhooks=lambda webhooks: tuple(_build_webhook(w) for w in webhooks),
    )
    return Config(**config)


def _build_source(raw: dict[str, Any]) -> SourceConfig:
    common = _fields(raw, name=_as_is, format=_as_is, max_line_bytes=parse_size)
    if raw["type"] == "file":
        return FileSourceConfig(
            paths=tuple(raw["paths"]),
            **common,
            **_fields(raw, start_at=_as_is, rotate_wait=parse_duration, watch=_as_is),
        )
    return SocketSourceConfig(
        path=raw["path"],
        **common,
        **_fields(
            raw,
            mode=_as_is,
            socket_mode=lambda mode: int(mode, 8),
            max_connections=_as_is,
            idle_timeout=parse_duration,
        ),
    )


def _build_webhook(raw: dict[str, Any]) -> WebhookConfig:
    def durations(keys: Mapping[str, Any]) -> dict[str, float]:
        return {key: parse_duration(value) for key, value in keys.items()}

    def signing(keys: Mapping[str, Any]) -> SigningConfig:
        return SigningConfig(tuple(keys["secrets"]) if "secrets" in keys else (keys["secret"],))

    # A user:password@ in the URL becomes an Authorization header (and leaves the URL, so
    # that no repr or log of it carries the password).
    url, basic = split_userinfo(raw["url"])
    headers = tuple(raw.get("headers", {}).items())
    if basic is not None:
        headers += (("Authorization", basic),)
    return WebhookConfig(
        events=frozenset(raw["events"]),
        url=url,
        headers=headers,
        **_fields(
            raw,
            name=_as_is,
            method=_as_is,
            tls=lambda tls: TLSConfig(**tls),
            request_timeout=parse_duration,
            connect_timeout=parse_duration,
            enabled=_as_is,
            allow_http=_as_is,
            batch=lambda b: BatchConfig(
                **_fields(b, max_events=_as_is, max_bytes=parse_size, max_wait=parse_duration)
            ),
            retry=lambda retry: RetryConfig(**durations(retry)),
            signing=signing,
        ),
    )


def _warnings(config: Config) -> tuple[str, ...]:
    warnings = []
    for i, webhook in enumerate(config.webhooks):
        if not webhook.events:
            warnings.append(f"webhooks[{i}].events: empty, this webhook sends nothing")
        if not webhook.tls.verify:
            warnings.append(f"webhooks[{i}].tls.verify: false, the server is not authenticated")
        url = urlsplit(webhook.url)
        if url.scheme == "http" and not is_loopback(url.hostname or ""):
            warnings.append(f"webhooks[{i}].url: plain http, events and headers travel unencrypted")
    return tuple(warnings)
