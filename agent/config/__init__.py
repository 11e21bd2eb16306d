"""The configuration: YAML -> frozen dataclasses, every check done at load time.

``load_config`` / ``parse_config`` read the YAML (safe loader), substitute ``${NAME}``
from the environment, validate against ``schemas/config.schema.json``, check what a
schema cannot say, and build the dataclasses. Any problem raises ``ConfigError`` listing
every problem found, each at its YAML path (``webhooks[1].url``), in the order of the
file; what is merely worth saying (a webhook with ``events: []``) goes to
``Config.warnings``.

Every key is declared once, in the table of ``keys``; the schema, the per-value checks
and the building all walk it:

- ``model``: the frozen dataclasses (``Config``, ``WebhookConfig``, ...);
- ``keys``: the table: each key's place, kind, description, required/secret flag;
- ``kinds``: what a value can be (duration, size, enum, URL, ...): its schema fragment,
  its checks beyond the schema, its conversion;
- ``table``: ``Key``, ``Section`` and the tree they compile to;
- ``schema``: the JSON Schema generated from the table, and its errors as problems;
- ``rules``: the checks across keys (https vs ``allow_http``, duplicate names, ...);
- ``document``: YAML, positions, ``${NAME}``, alias bombs; ``units``: durations,
  sizes, listen addresses; ``load``: the steps in order.

Adding a key is a line in ``keys`` and a field in ``model``, then ``make schema``
(a test fails until ``schemas/config.schema.json`` is regenerated, and another until
``config.example.yaml`` shows the key). ``webhooks[].payload`` was added so::

    # keys.py, among the webhooks[] keys:
    Key("webhooks[].payload", Enum("classic", "wallarm"), "classic: the flat objects "
        "of CONTRACT §5; wallarm: the §5a envelope."),
    # model.py, in WebhookConfig:
    payload: str = "classic"  # classic | wallarm

A new mapping is a ``Section`` line, its keys and a dataclass; a field of the parent
holds it (``filter: FilterConfig = FilterConfig()``)::

    Section("webhooks[].filter", FilterConfig, "Which events it gets; every condition "
            "given must hold."),
    Key("webhooks[].filter.block_status", EnumSet("blocked", ...), "..."),
    Key("webhooks[].filter.domains", TextList(), "Shell-style globs."),

A check across keys is a function in ``rules`` named in its section's ``rules=``; a
default that depends on another key can be the section's ``finish``, which gets the
converted fields before the dataclass is built. ``wallarm.client_name`` and
``wallarm.cloud`` stay None when not given instead, and are filled in where they are
used (``agent.formats.wallarm.identity_of``): the host name is the node's, not the
file's, and a config then equals another with the same text.
"""

from __future__ import annotations

from agent.config.load import load_config, parse_config
from agent.config.model import (
    DEFAULT_STATE_DIR,
    BatchConfig,
    Config,
    FileSourceConfig,
    FilterConfig,
    LogConfig,
    MetricsConfig,
    RetryConfig,
    SigningConfig,
    SocketSourceConfig,
    SourceConfig,
    SpoolConfig,
    TLSConfig,
    WallarmConfig,
    WebhookConfig,
)
from agent.config.rules import is_loopback, split_userinfo
from agent.config.units import GIB, KIB, MIB, parse_duration, parse_listen_address, parse_size

__all__ = [
    "DEFAULT_STATE_DIR",
    "GIB",
    "KIB",
    "MIB",
    "BatchConfig",
    "Config",
    "FileSourceConfig",
    "FilterConfig",
    "LogConfig",
    "MetricsConfig",
    "RetryConfig",
    "SigningConfig",
    "SocketSourceConfig",
    "SourceConfig",
    "SpoolConfig",
    "TLSConfig",
    "WallarmConfig",
    "WebhookConfig",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen_address",
    "parse_size",
    "split_userinfo",
]
