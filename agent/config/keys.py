"""Every key of the config file, declared once, in the order of ``config.example.yaml``.

A ``Key`` line gives its place, its kind (what it must be and becomes), its description
(the schema's ``description``, shown by editors), and whether it is required or may hold
a secret; it fills the dataclass field of its name in ``agent.config.model``, whose
default is the key's default. A ``Section`` line gives a mapping of the file, its
dataclass and the rules across its keys (``agent.config.rules``). From this table come
``schemas/config.schema.json``, the per-value checks and the dataclasses.
"""

from __future__ import annotations

from agent.config import rules
from agent.config.kinds import (
    Bool,
    Duration,
    Enum,
    EnumSet,
    FilePath,
    HeaderMap,
    Integer,
    ListenAddress,
    Name,
    OctalMode,
    OneItem,
    Size,
    Text,
    TextList,
    Url,
)
from agent.config.model import (
    BatchConfig,
    Config,
    FileSourceConfig,
    FilterConfig,
    LogConfig,
    MetricsConfig,
    RetryConfig,
    SigningConfig,
    SocketSourceConfig,
    SpoolConfig,
    TLSConfig,
    WallarmConfig,
    WebhookConfig,
)
from agent.config.table import Key, Section, Table, compile_table
from agent.config.units import KIB, MIB
from agent.formats import ATTACK_TYPES, BLOCK_STATUSES, THREATS
from agent.formats.wallarm import CLOUDS

#: The smallest ``spool.max_bytes``: below it the spool's WAL and reserve leave no room
#: (``agent.spool.capacity.MIN_MAX_BYTES``; a test holds the two equal).
MIN_SPOOL_BYTES = 2 * MIB
FORMAT = Enum("native", "modsecurity")
EVENT_TYPES = ("hit", "vulnerability", "system", "scope")

KEYS: tuple[Section | Key, ...] = (
    Section("", Config, "tailhook's configuration (CONTRACT §3).",
            rules=(rules.names_are_unique, rules.globs_stay_out_of_state_dir)),
    Key("state_dir", FilePath(), "Spool, checkpoints, dead letters and rejected lines; created "
        "0700, refused if others may write to it. No file source glob may reach into it."),
    Key("console_url", Url(base=True), "Base of vulnerability links (CONSOLE_URL/object/ID)."),

    Section("metrics", MetricsConfig, "The HTTP endpoint of /metrics, /healthz and /readyz."),
    Key("metrics.listen", ListenAddress(), "HOST:PORT it listens on: [::1]:9717 for IPv6, "
        "0.0.0.0:9717 to be scraped from outside.", field=("host", "port")),

    Section("log", LogConfig, "Log lines, on stderr."),
    Key("log.level", Enum("debug", "info", "warning", "error"), "The least severe level logged."),
    Key("log.format", Enum("json", "text"), "One JSON object per line, or text."),

    Section("sources[]", None, "Where detection lines are read from.", tag="type"),
    Key("sources[].name", Name(), "Unique among sources; names its rejected-lines file.",
        required=True),
    Key("sources[].type", Enum("file", "unix_socket"), "Files (globs) or a UNIX socket.",
        required=True),
    Key("sources[].format", FORMAT, "How its lines are written: tailhook's native JSON "
        "lines, or ModSecurity v3 JSON audit log lines."),
    Key("sources[].max_line_bytes", Size(minimum=KIB), "Longer lines are rejected "
        "(line_too_long), never held whole in memory."),

    Section("sources[file]", FileSourceConfig, "Files found by globs, tailed across rotations."),
    Key("sources[file].paths", TextList(), "Globs; files that match later are picked up too.",
        required=True),
    Key("sources[file].start_at", Enum("beginning", "end"), "Where a file found at the very "
        "first start is read from; a file that appears later is read from its beginning."),
    Key("sources[file].rotate_wait", Duration(), "How long a rotated-away file is still read "
        "after it stopped growing."),
    Key("sources[file].watch", Enum("auto", "inotify", "poll"), "How changes are noticed: "
        "auto is inotify, else polling."),
    Key("sources[file].workers", Integer(minimum=1), "Processes that convert a burst (a "
        "read of 256KiB or more: a backlog, a big file at start), the agent's own included; "
        "1: the source's thread alone."),

    Section("sources[unix_socket]", SocketSourceConfig, "A UNIX socket the node writes to; "
            "its directory is created if missing, a stale socket file replaced."),
    Key("sources[unix_socket].path", Text(), "The socket file.", required=True),
    Key("sources[unix_socket].mode", Enum("stream", "datagram"), "stream: newline-delimited "
        "lines per connection; datagram: one or more lines per datagram."),
    Key("sources[unix_socket].socket_mode", OctalMode(), "Permissions of the socket file, "
        'quoted octal ("0660").'),
    Key("sources[unix_socket].max_connections", Integer(minimum=1), "Stream clients served at "
        "once; more wait to be accepted."),
    Key("sources[unix_socket].idle_timeout", Duration(positive=True), "A stream client "
        "silent this long is closed."),

    Section("spool", SpoolConfig, "The durable queue between sources and webhooks."),
    Key("spool.max_bytes", Size(minimum=MIN_SPOOL_BYTES), "Its most bytes on disk, its "
        "write-ahead log included."),
    Key("spool.when_full", Enum("block", "drop_oldest"), "block: stop reading sources until "
        "there is room; drop_oldest: discard the oldest undelivered events, counted."),

    Section("webhooks[]", WebhookConfig, "Where notifications are delivered, at least once.",
            rules=(rules.https_unless_allowed, rules.credentials_given_once,
                   rules.headers_tailhook_can_send),
            finish=rules.credentials_from_url),
    Key("webhooks[].name", Name(), "Unique among webhooks; names its dead-letter file and "
        "its metrics' webhook label.", required=True),
    Key("webhooks[].url", Url(), "https, or http to a loopback host (or with allow_http). A "
        "user:password@ part (percent-encoded) is sent as Authorization: Basic, never "
        "printed.", required=True, secret=True),
    Key("webhooks[].allow_http", Bool(), "Allow a plain http URL to any host (check-config "
        "warns)."),
    Key("webhooks[].method", Enum("POST", "PUT"), "The HTTP method."),
    Key("webhooks[].headers", HeaderMap(), "Headers sent with every request; values are never "
        "printed or logged. Latin-1 only; not one tailhook sets itself.", secret=True),

    Section("webhooks[].tls", TLSConfig, "TLS of the connection; the files must be readable "
            "when the config is loaded.",
            rules=(rules.tls_files_readable, rules.key_file_has_cert_file)),
    Key("webhooks[].tls.verify", Bool(), "Authenticate the server by its certificate "
        "(false: check-config warns)."),
    Key("webhooks[].tls.ca_file", Text(), "PEM CA certificates trusted instead of the "
        "system's."),
    Key("webhooks[].tls.cert_file", Text(), "PEM client certificate (mTLS); may hold its "
        "key too."),
    Key("webhooks[].tls.key_file", Text(), "PEM key of cert_file, unless cert_file holds it."),

    Key("webhooks[].request_timeout", Duration(positive=True), "Bounds the whole request, to "
        "the last byte of the answer, and never past retry.max_elapsed."),
    Key("webhooks[].connect_timeout", Duration(positive=True), "Bounds connecting, TLS "
        "handshake included."),
    Key("webhooks[].events", EnumSet(*EVENT_TYPES), "The event types it gets; [] sends "
        "nothing (check-config warns).", required=True),
    Key("webhooks[].enabled", Bool(), "false: nothing is sent, nothing is kept for it."),
    Key("webhooks[].payload", Enum("classic", "wallarm"), "classic: the flat objects of "
        "CONTRACT §5; wallarm: each in Wallarm's current envelope (§5a), with the wallarm "
        "section's client_name and cloud."),
    Key("webhooks[].body", Enum("json_array", "ndjson"), "json_array: one JSON array "
        "(application/json); ndjson: one object a line, each ending in a newline "
        "(application/x-ndjson). A signature covers the body as sent."),

    Section("webhooks[].filter", FilterConfig, "Which of its events it gets, judged when an "
            "event is accepted (an event it excludes is never kept for it): every condition "
            "given must hold; one that cannot apply to an event's type does not exclude it, "
            "so system and scope events always pass."),
    Key("webhooks[].filter.block_status", EnumSet(*BLOCK_STATUSES, non_empty=True), "Hits "
        "with one of these block statuses."),
    Key("webhooks[].filter.attack_types", EnumSet(*ATTACK_TYPES, non_empty=True), "Hits of "
        "one of these attack types (the hit's type)."),
    Key("webhooks[].filter.domains", TextList(), "Hits and vulnerabilities whose domain "
        "matches one of these shell-style globs (*.shop.example.com), ignoring case."),
    Key("webhooks[].filter.threats", EnumSet(*THREATS, non_empty=True), "Vulnerabilities "
        "of one of these threat levels."),

    Section("webhooks[].batch", BatchConfig, "How events are grouped into one request."),
    Key("webhooks[].batch.max_events", Integer(minimum=1), "Most events in one request."),
    Key("webhooks[].batch.max_bytes", Size(minimum=1), "Most bytes of one request body."),
    Key("webhooks[].batch.max_wait", Duration(), "Longest an event waits for others to join "
        "its batch."),

    Section("webhooks[].retry", RetryConfig, "Retries of a failed request: capped "
            "exponential backoff with jitter.", rules=(rules.backoff_in_order,)),
    Key("webhooks[].retry.initial_backoff", Duration(positive=True), "The first wait; not "
        "longer than max_backoff."),
    Key("webhooks[].retry.max_backoff", Duration(), "The longest wait, Retry-After "
        "included."),
    Key("webhooks[].retry.max_elapsed", Duration(), "Past this since its first attempt, a "
        "batch is dead-lettered (expired)."),

    Section("webhooks[].signing", SigningConfig, "Standard Webhooks v1 signatures "
            "(webhook-signature).", rules=(rules.secrets_are_webhook_secrets,),
            one_of=("secret", "secrets"),
            message="must set either secret or secrets (a non-empty list), not both"),
    Key("webhooks[].signing.secret", OneItem(Text()), "whsec_ then the key in base64, or a "
        "raw key without whsec_.", secret=True, field="secrets"),
    Key("webhooks[].signing.secrets", TextList(), "Several secrets while rotating: one v1 "
        "signature for each.", secret=True),

    Key("shutdown_timeout", Duration(), "How long SIGTERM waits for in-flight deliveries (a "
        "failing webhook gets at most one more attempt)."),

    Section("wallarm", WallarmConfig, "Who the envelopes of payload: wallarm say they come "
            "from (details.client_name, details.cloud)."),
    Key("wallarm.client_name", Text(), "Default: the node's host name."),
    Key("wallarm.cloud", Enum(*CLOUDS), "Default: US when console_url's host starts with "
        "us1., else EU."),
)  # fmt: skip

TABLE: Table = compile_table(KEYS)
