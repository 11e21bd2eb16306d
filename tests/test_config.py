"""The configuration (CONTRACT §3): YAML -> dataclasses, every problem with its YAML path."""

from __future__ import annotations

import base64
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import (
    GIB,
    KIB,
    MIB,
    BatchConfig,
    Config,
    FileSourceConfig,
    LogConfig,
    MetricsConfig,
    RetryConfig,
    SigningConfig,
    SocketSourceConfig,
    SpoolConfig,
    TLSConfig,
    WebhookConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from agent.config.document import MAX_EXPANDED_NODES, expanded_size, read_yaml, substitute_env
from agent.config.units import parse_listen_address
from agent.errors import ConfigError, Problem
from agent.schemas import load_schema

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ENV = {"SOC_TOKEN": "tok-3f9a", "SOC_WEBHOOK_SECRET": SECRET}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems of an invalid config, as check-config prints them."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env or {})
    return [str(problem) for problem in caught.value.problems]


def webhook(extra: str = "", **kwargs: str) -> str:
    """A config with one webhook; ``extra`` is indented YAML added to it."""
    return "webhooks:\n" + webhook_item(extra, **kwargs)


def webhook_item(
    extra: str = "", events: str = "[hit]", url: str = "https://h.example/x", name: str = "w"
) -> str:
    """One more item for the list of ``webhook()``."""
    text = f"  - name: {name}\n    url: {url}\n    events: {events}\n"
    return text + "".join(f"    {line}\n" for line in extra.strip("\n").splitlines())


DURATION = "must be a duration: seconds as a number, or a string with a unit (250ms, 15s, 5m, 24h)"
SIZE = (
    "must be a size: bytes as a whole number, or a string with a unit "
    "(512B, 64KiB, 1MiB, 1GiB; KB, MB, GB are powers of 1000)"
)
NAME = (
    "must be a name of up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)
RESERVED = "is set by tailhook and cannot be configured"
WHSEC = "must be whsec_ then the key in base64 (or a raw key without whsec_)"
OCTAL = 'must be permissions as a quoted string of octal digits, like "0660"'


def one_webhook(extra: str = "", **kwargs: str) -> WebhookConfig:
    (hook,) = parse_config(webhook(extra, **kwargs), {}).webhooks
    return hook


# --- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (15, 15.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("200ms", 0.2),
        ("15s", 15.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["15 parsecs", "15", "15S", "-1s", " 5s", "1e3s", "1.s", "", -1, True, None, [], math.inf,
     math.nan, 10**400, "9" * 400 + "h"],
)  # fmt: skip
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration|seconds"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("512B", 512),
        ("64KiB", 64 * KIB),
        ("1MiB", MIB),
        ("1GiB", GIB),
        ("2TiB", 2 * 1024 * GIB),
        ("1KB", 1000),
        ("5MB", 5_000_000),
        ("1GB", 10**9),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["1.5MiB", "1 MiB", "1mib", "MiB", "1KiBs", "", -1, 1.5, True, None]
)
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9717", ("127.0.0.1", 9717)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9717", ("::1", 9717)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_parse_listen_address(text: str, address: tuple[str, int]) -> None:
    assert parse_listen_address(text) == address


@pytest.mark.parametrize("text", ["9717", "host", ":9717", "host:65536", "[nope]:1", "::1:80"])
def test_parse_listen_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


# --- the contract's example ----------------------------------------------------------------


def test_example_config_loads_with_its_env_vars() -> None:
    config = load_config(EXAMPLE, ENV)

    assert config.state_dir == Path("/var/lib/tailhook")
    assert config.console_url == "https://my.wallarm.com"
    assert config.metrics == MetricsConfig("127.0.0.1", 9717)
    assert config.log == LogConfig("info", "json")
    assert config.spool == SpoolConfig(max_bytes=GIB, when_full="block")
    assert config.shutdown_timeout == 10.0
    assert config.warnings == ()
    assert config.sources == (
        FileSourceConfig(
            name="detections",
            paths=("/var/log/wallarm/detections*.log",),
            format="native",
            start_at="beginning",
            max_line_bytes=MIB,
            rotate_wait=5.0,
            watch="auto",
        ),
        SocketSourceConfig(
            name="node-socket",
            path="/run/tailhook/detections.sock",
            mode="stream",
            socket_mode=0o660,
            max_connections=64,
            format="native",
        ),
    )
    (soc,) = config.webhooks
    assert soc.name == "soc"
    assert soc.url == "https://siem.example.com/hooks/wallarm"
    assert soc.method == "POST"
    assert soc.headers == (("Authorization", "Bearer tok-3f9a"),)
    assert soc.tls == TLSConfig(verify=True)
    assert soc.request_timeout == 15.0
    assert soc.connect_timeout == 20.0
    assert soc.events == frozenset({"hit", "vulnerability", "system", "scope"})
    assert soc.enabled is True
    assert soc.allow_http is False
    assert soc.batch == BatchConfig(max_events=500, max_bytes=MIB, max_wait=0.2)
    assert soc.retry == RetryConfig(initial_backoff=1.0, max_backoff=300.0, max_elapsed=86400.0)
    assert soc.signing == SigningConfig((SECRET,))


def test_example_config_with_its_tls_files(tmp_path: Path) -> None:
    """The contract's example exactly, its commented-out TLS files made real."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    text = re.sub(r"# (\w+_file: )/etc/tailhook/", rf"\1{tmp_path}/", EXAMPLE.read_text())
    (soc,) = parse_config(text, ENV).webhooks
    assert soc.tls == TLSConfig(
        verify=True,
        ca_file=f"{tmp_path}/ca.pem",
        cert_file=f"{tmp_path}/client.pem",
        key_file=f"{tmp_path}/client.key",
    )


def test_example_config_needs_its_env_vars() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, {})
    assert [str(p) for p in caught.value.problems] == [
        "webhooks[0].headers.Authorization: environment variable SOC_TOKEN is not set",
        "webhooks[0].signing.secret: environment variable SOC_WEBHOOK_SECRET is not set",
    ]


def test_the_schema_is_a_json_schema_closed_everywhere() -> None:
    schema = load_schema("config")  # checks it against the 2020-12 metaschema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def objects(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                found.append(node)
            for value in node.values():
                found += objects(value)
        elif isinstance(node, list):
            for value in node:
                found += objects(value)
        return found

    closed = objects(schema)
    assert len(closed) >= 12
    for node in closed:
        # The source object is closed by its file/unix_socket branch (if/then).
        assert node.get("additionalProperties") is False or "allOf" in node, node


# --- defaults --------------------------------------------------------------------------------


def test_an_almost_empty_config_takes_every_default() -> None:
    assert parse_config("log: {}\n", {}) == Config()
    config = Config()
    assert config.state_dir == Path("/var/lib/tailhook")
    assert config.console_url == "https://my.wallarm.com"
    assert config.metrics == MetricsConfig("127.0.0.1", 9717)
    assert config.log == LogConfig("info", "json")
    assert config.spool == SpoolConfig(GIB, "block")
    assert config.shutdown_timeout == 10.0


def test_webhook_defaults() -> None:
    hook = one_webhook()
    assert hook == WebhookConfig(name="w", url="https://h.example/x", events=frozenset({"hit"}))
    assert hook.method == "POST"
    assert hook.headers == ()
    assert hook.tls == TLSConfig(verify=True, ca_file=None, cert_file=None, key_file=None)
    assert hook.request_timeout == 15.0
    assert hook.connect_timeout == 20.0
    assert hook.enabled is True
    assert hook.allow_http is False
    assert hook.batch == BatchConfig(500, MIB, 0.2)
    assert hook.retry == RetryConfig(1.0, 300.0, 86400.0)
    assert hook.signing is None


def test_source_defaults() -> None:
    text = """
sources:
  - {name: f, type: file, paths: [/a.log]}
  - {name: s, type: unix_socket, path: /run/s.sock}
"""
    assert parse_config(text, {}).sources == (
        FileSourceConfig("f", ("/a.log",), "native", "beginning", MIB, 5.0, "auto"),
        SocketSourceConfig("s", "/run/s.sock", "stream", 0o660, 64, "native", MIB),
    )


# --- every setting -------------------------------------------------------------------------


def test_every_webhook_setting(tmp_path: Path) -> None:
    for name in ("ca.pem", "both.pem"):
        (tmp_path / name).write_text("pem\n")
    hook = one_webhook(
        f"""
method: PUT
headers:
  Authorization: Bearer abc
  X-Team: soc
tls:
  verify: false
  ca_file: {tmp_path}/ca.pem
  cert_file: {tmp_path}/both.pem
request_timeout: 2.5
connect_timeout: 750ms
enabled: false
allow_http: true
batch: {{max_events: 10, max_bytes: 64KiB, max_wait: 1s}}
retry: {{initial_backoff: 100ms, max_backoff: 2m, max_elapsed: 1h}}
signing:
  secrets: ["{SECRET}", "whsec_b2xk"]
""",
        events="[scope, system]",
        url="http://siem.example/x",
    )
    assert hook == WebhookConfig(
        name="w",
        url="http://siem.example/x",
        events=frozenset({"scope", "system"}),
        method="PUT",
        headers=(("Authorization", "Bearer abc"), ("X-Team", "soc")),
        tls=TLSConfig(False, f"{tmp_path}/ca.pem", f"{tmp_path}/both.pem", None),
        request_timeout=2.5,
        connect_timeout=0.75,
        enabled=False,
        allow_http=True,
        batch=BatchConfig(10, 64 * KIB, 1.0),
        retry=RetryConfig(0.1, 120.0, 3600.0),
        signing=SigningConfig((SECRET, "whsec_b2xk")),
    )


def test_every_other_setting() -> None:
    text = """
state_dir: /tmp/th-state
console_url: https://eu.example.com/
metrics: {listen: "[::1]:9100"}
log: {level: debug, format: text}
spool: {max_bytes: 50MB, when_full: drop_oldest}
shutdown_timeout: 0
sources:
  - name: f.1
    type: file
    paths: [/a/*.log, /b.log]
    format: modsecurity
    start_at: end
    max_line_bytes: 4096
    rotate_wait: 1m
    watch: poll
  - name: s_2
    type: unix_socket
    path: /run/s.sock
    mode: datagram
    socket_mode: "600"
    max_connections: 1
    format: modsecurity
    max_line_bytes: 2KiB
"""
    config = parse_config(text, {})
    assert config == Config(
        state_dir=Path("/tmp/th-state"),
        console_url="https://eu.example.com",  # no trailing slash: links add "/object/ID"
        metrics=MetricsConfig("::1", 9100),
        log=LogConfig("debug", "text"),
        spool=SpoolConfig(50_000_000, "drop_oldest"),
        shutdown_timeout=0.0,
        sources=(
            FileSourceConfig(
                "f.1", ("/a/*.log", "/b.log"), "modsecurity", "end", 4096, 60.0, "poll"
            ),
            SocketSourceConfig("s_2", "/run/s.sock", "datagram", 0o600, 1, "modsecurity", 2 * KIB),
        ),
    )


# --- problems: format and paths ------------------------------------------------------------


def test_unknown_key_is_reported_at_the_key() -> None:
    assert problems(webhook("evnts: [hit]")) == ["webhooks[0].evnts: unknown key"]


def test_unknown_keys_everywhere_one_problem_each() -> None:
    text = webhook("batch: {max_event: 5}\ntls: {verfy: true}\nevnts: [hit]\nmethd: PUT")
    text += "wbhooks: []\nlog: {levl: info}\n"
    text += "sources: [{name: a, type: file, paths: [x], path: y}]\n"
    assert problems(text) == [
        "webhooks[0].batch.max_event: unknown key",
        "webhooks[0].tls.verfy: unknown key",
        "webhooks[0].evnts: unknown key",
        "webhooks[0].methd: unknown key",
        "wbhooks: unknown key",
        "log.levl: unknown key",
        "sources[0].path: unknown key",
    ]


def test_problem_paths_into_lists() -> None:
    text = "sources:\n  - name: a\n    type: file\n    paths: [/ok, '', 3]\n"
    assert problems(text) == [
        "sources[0].paths[1]: must not be empty",
        "sources[0].paths[2]: must be a string, not an integer",
    ]


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = """
metrics: {listen: "localhost:99999"}
sources:
  - {name: a, type: file, paths: [/x], max_line_bytes: 100}
  - {name: a, type: unix_socket, path: /s, socket_mode: 0660}
webhooks:
  - name: soc
    url: ftp://siem.example.com
    evnts: [hit]
    request_timeout: 15 parsecs
    headers: {Authorization: "Bearer ${SOC_TOKEN}"}
  - name: soc
    url: http://siem.example.com
    events: [hit, hits]
    retry: {initial_backoff: 10m, max_backoff: 1m}
"""
    assert problems(text) == [
        "metrics.listen: port must be 0 to 65535",
        "sources[0].max_line_bytes: must be at least 1KiB",
        "sources[1].name: 'a' is also the name of sources[0]",
        f"sources[1].socket_mode: {OCTAL}, not an integer",
        "webhooks[0].events: is required",  # not in the file: at the start of its mapping
        "webhooks[0].url: must be an http or https URL",
        "webhooks[0].evnts: unknown key",
        f"webhooks[0].request_timeout: {DURATION}",
        "webhooks[0].headers.Authorization: environment variable SOC_TOKEN is not set",
        "webhooks[1].name: 'soc' is also the name of webhooks[0]",
        "webhooks[1].url: must be https (http only to a loopback host, or with allow_http: true)",
        "webhooks[1].events[1]: must be one of hit, vulnerability, system, scope, not 'hits'",
        "webhooks[1].retry.initial_backoff: must not be longer than max_backoff",
    ]  # fmt: skip


def test_problem_str_and_config_error_str() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(webhook("evnts: [hit]\nmethod: GET"), {})
    assert caught.value.problems == (
        Problem("webhooks[0].evnts", "unknown key"),
        Problem("webhooks[0].method", "must be one of POST, PUT, not 'GET'"),
    )
    assert str(caught.value) == (
        "webhooks[0].evnts: unknown key; webhooks[0].method: must be one of POST, PUT, not 'GET'"
    )


# --- YAML ----------------------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_with_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("log:\n  level: info\n  format: [json\nwebhooks: []\n", {}, source="c.yaml")
    (problem,) = caught.value.problems
    assert problem.path == ""
    assert problem.message.startswith("c.yaml: invalid YAML at line ")
    assert re.search(r"line \d+, column \d+", problem.message)


def test_yaml_tab_indentation_is_a_syntax_error() -> None:
    (problem,) = problems("log:\n\tlevel: info\n")
    assert "invalid YAML at line 2, column 1" in problem


def test_yaml_unsafe_tags_are_refused() -> None:
    (problem,) = problems("log: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in problem
    assert "constructor" in problem


def test_yaml_duplicate_key_is_a_problem() -> None:
    text = "log: {level: info}\nwebhooks: []\nlog: {level: debug}\n"
    assert problems(text) == ["log: duplicate key (first given at line 1)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "<config> is empty"),
        ("# only a comment\n", "<config> is empty"),
        ("- a\n- b\n", "<config> must be a mapping of settings, not a list"),
        ("just text\n", "<config> must be a mapping of settings, not a string"),
    ],
)
def test_empty_or_not_a_mapping(text: str, message: str) -> None:
    assert problems(text) == [message]


def test_non_string_key_is_a_problem() -> None:
    assert problems("log: {level: info, 3: x}\n") == ["log.3: key must be a string (quote it)"]


def test_a_null_where_a_mapping_belongs() -> None:
    assert problems("webhooks:\n") == ["webhooks: must be a list, not null"]


# --- environment variables -----------------------------------------------------------------


def test_env_vars_anywhere_in_any_string_value() -> None:
    text = webhook(
        'headers: {Authorization: "Bearer ${TOKEN}", X-Both: "${A}-${B}"}',
        url="https://${HOST}:8443/hook",
        events="['${EVENT}']",
    )
    env = {"TOKEN": "t0k", "A": "1", "B": "2", "HOST": "siem.example", "EVENT": "scope"}
    (hook,) = parse_config(text, env).webhooks
    assert hook.url == "https://siem.example:8443/hook"
    assert hook.headers == (("Authorization", "Bearer t0k"), ("X-Both", "1-2"))
    assert hook.events == frozenset({"scope"})


def test_missing_env_var_is_a_problem_at_its_value() -> None:
    text = webhook('headers: {Authorization: "Bearer ${SOC_TOKEN}"}')
    text += "sources: [{name: a, type: file, paths: [/ok, '/var/${DIR}/x', '${A}${B}']}]\n"
    assert problems(text, {"A": "a"}) == [
        "webhooks[0].headers.Authorization: environment variable SOC_TOKEN is not set",
        "sources[0].paths[1]: environment variable DIR is not set",
        "sources[0].paths[2]: environment variable B is not set",
    ]


def test_env_var_set_to_empty_counts_as_set() -> None:
    (hook,) = parse_config(webhook('headers: {X-Empty: "${E}"}'), {"E": ""}).webhooks
    assert hook.headers == (("X-Empty", ""),)


def test_text_that_is_not_a_variable_stays() -> None:
    (hook,) = parse_config(webhook('headers: {X-A: "$HOME ${} ${1X} $${Y"}'), {}).webhooks
    assert hook.headers == (("X-A", "$HOME ${} ${1X} $${Y"),)


def test_substitution_comes_before_the_schema() -> None:
    text = webhook("method: ${METHOD}\nbatch: {max_bytes: '${SIZE}'}")
    hook = parse_config(text, {"METHOD": "PUT", "SIZE": "2MiB"}).webhooks[0]
    assert (hook.method, hook.batch.max_bytes) == ("PUT", 2 * MIB)
    assert problems(text, {"METHOD": "PATCH", "SIZE": "2MiB"}) == [
        "webhooks[0].method: must be one of POST, PUT"  # from the environment: not quoted
    ]


def test_load_config_takes_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(webhook('headers: {Authorization: "Bearer ${TH_TEST_TOKEN}"}'))
    monkeypatch.setenv("TH_TEST_TOKEN", "from-env")
    (hook,) = load_config(path).webhooks
    assert hook.headers == (("Authorization", "Bearer from-env"),)
    (hook,) = load_config(str(path), {"TH_TEST_TOKEN": "given"}).webhooks
    assert hook.headers == (("Authorization", "Bearer given"),)


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml", {})
    (problem,) = caught.value.problems
    assert problem == Problem("", f"cannot read {tmp_path}/missing.yaml: No such file or directory")


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"log: {level: \xff}\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(path, {})


# --- secrets -------------------------------------------------------------------------------


def test_secrets_never_appear_in_errors() -> None:
    token = "s3cr3t-T0KEN-value"
    text = f"""
webhooks:
  - name: w
    url: "https://h.example/x?token=${{URL_TOKEN}}"
    events: [hit]
    evnts: []
    headers:
      Authorization: "Bearer ${{TOKEN}}\\r\\nX-Injected: 1"
      X-Literal: "{token}-literal\\n"
      X-Number: 12345678
    signing:
      secrets: ["whsec_${{TOKEN}}", "whsec_{token}-not-base64!", 42]
  - name: v
    url: "${{URL_TOKEN}}"
    events: ["${{TOKEN}}"]
    method: "${{TOKEN}}"
    signing: {{secret: "${{TOKEN}}", secrets: ["{token}"]}}
"""
    env = {"TOKEN": token, "URL_TOKEN": token}
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env)
    found = [str(problem) for problem in caught.value.problems]
    assert len(found) >= 8
    assert "webhooks[0].headers.Authorization: value must not contain" in "\n".join(found)
    for shown in (str(caught.value), repr(caught.value), *found, *map(repr, caught.value.problems)):
        assert token not in shown
        assert "12345678" not in shown


def test_secrets_stay_out_of_reprs() -> None:
    config = load_config(EXAMPLE, ENV)
    assert "tok-3f9a" not in repr(config)
    assert SECRET not in repr(config)
    assert SECRET.removeprefix("whsec_") not in repr(config)


# --- webhook rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "must be an http or https URL"),
        ("ftp://h.example/x", "must be an http or https URL"),
        ("//h.example/x", "must be an http or https URL"),
        ("https://", "has no host"),
        ("https:///path", "has no host"),
        ("https://h.example:99999/x", "is not a valid URL"),
        ("https://h.example:port/x", "is not a valid URL"),
        ("https://[::1/x", "is not a valid URL"),
        ('"https://h.example/a b"', "must be an http or https URL"),
        ("http://siem.example/x", "must be https (http only to a loopback host, or with "
         "allow_http: true)"),
        ("http://10.0.0.1/x", "must be https (http only to a loopback host, or with "
         "allow_http: true)"),
    ],
)  # fmt: skip
def test_bad_webhook_urls(url: str, message: str) -> None:
    assert problems(webhook(url=url)) == [f"webhooks[0].url: {message}"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://127.9.9.9/hook",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
        "http://LOCALHOST:1/hook",
        "https://siem.example/hook",
    ],
)
def test_http_is_accepted_to_loopback(url: str) -> None:
    config = parse_config(webhook(url=url), {})
    assert config.webhooks[0].url == url
    assert config.warnings == ()


def test_http_to_another_host_with_allow_http() -> None:
    config = parse_config(webhook("allow_http: true", url="http://siem.example/x"), {})
    assert config.webhooks[0].allow_http is True
    assert config.warnings == (
        "webhooks[0].url: plain http, events and headers travel unencrypted",
    )
    assert problems(webhook("allow_http: 'yes'")) == [
        "webhooks[0].allow_http: must be true or false, not a string"
    ]


def test_name_url_and_events_are_required() -> None:
    assert problems("webhooks: [{}]\n") == [
        "webhooks[0].name: is required",
        "webhooks[0].url: is required",
        "webhooks[0].events: is required",
    ]


def test_events_are_known_types_listed_once() -> None:
    assert problems(webhook(events="[hit, hit]")) == [
        "webhooks[0].events: must not list the same item twice"
    ]
    assert problems(webhook(events="[hit, attack]")) == [
        "webhooks[0].events[1]: must be one of hit, vulnerability, system, scope, not 'attack'"
    ]
    assert problems(webhook(events="hit")) == ["webhooks[0].events: must be a list, not a string"]


def test_empty_events_is_a_warning() -> None:
    config = parse_config(webhook(events="[]") + webhook_item(events="[]", name="w2"), {})
    assert config.webhooks[0].events == frozenset()
    assert config.warnings == (
        "webhooks[0].events: empty, this webhook sends nothing",
        "webhooks[1].events: empty, this webhook sends nothing",
    )


def test_tls_verify_false_is_a_warning() -> None:
    config = parse_config(webhook("tls: {verify: false}"), {})
    assert config.webhooks[0].tls.verify is False
    assert config.warnings == ("webhooks[0].tls.verify: false, the server is not authenticated",)


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("pem")
    text = webhook(
        f"tls: {{ca_file: {tmp_path}/ca.pem, cert_file: {tmp_path}/no.pem, key_file: {tmp_path}}}"
    )
    assert problems(text) == [
        f"webhooks[0].tls.cert_file: cannot read {tmp_path}/no.pem: No such file or directory",
        f"webhooks[0].tls.key_file: cannot read {tmp_path}: Is a directory",
    ]


def test_tls_key_file_needs_cert_file(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("pem")
    assert problems(webhook(f"tls: {{key_file: {tmp_path}/k.pem}}")) == [
        "webhooks[0].tls.key_file: needs cert_file, the certificate of this key"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("request_timeout: 0", "webhooks[0].request_timeout: must be more than 0"),
        ("connect_timeout: 0ms", "webhooks[0].connect_timeout: must be more than 0"),
        ("request_timeout: -1", f"webhooks[0].request_timeout: {DURATION}"),
        ("request_timeout: 15 parsecs", f"webhooks[0].request_timeout: {DURATION}"),
        ("connect_timeout: [1]", f"webhooks[0].connect_timeout: {DURATION}"),
        ("request_timeout: .inf", "webhooks[0].request_timeout: must be a finite number of "
         "seconds, 0 or more"),
        ("request_timeout: .nan", "webhooks[0].request_timeout: must be a finite number of "
         "seconds, 0 or more"),
        ("batch: {max_events: 0}", "webhooks[0].batch.max_events: must be at least 1"),
        ("batch: {max_events: 1.5}", "webhooks[0].batch.max_events: must be an integer, not a "
         "number"),
        ("batch: {max_bytes: 0KiB}", "webhooks[0].batch.max_bytes: must be at least 1"),
        ("batch: {max_bytes: 1.5MiB}", f"webhooks[0].batch.max_bytes: {SIZE}"),
        ("batch: {max_wait: 1d}", f"webhooks[0].batch.max_wait: {DURATION}"),
        ("retry: {initial_backoff: 0}", "webhooks[0].retry.initial_backoff: must be more than 0"),
        ("retry: {initial_backoff: 2s, max_backoff: 1s}", "webhooks[0].retry.initial_backoff: "
         "must not be longer than max_backoff"),
        ("method: get", "webhooks[0].method: must be one of POST, PUT, not 'get'"),
        ("enabled: 1", "webhooks[0].enabled: must be true or false, not an integer"),
        ("name: 'a b'", f"webhooks[0].name: {NAME}"),
        ("name: ../etc", f"webhooks[0].name: {NAME}"),
        (f"name: {'n' * 65}", f"webhooks[0].name: {NAME}"),
        ("name: 5", f"webhooks[0].name: {NAME}, not an integer"),
    ],
)  # fmt: skip
def test_webhook_value_rules(extra: str, message: str) -> None:
    text = webhook(extra)
    if extra.startswith("name:"):
        text = text.replace("name: w\n    ", "")
    assert problems(text) == [message]


def test_retry_backoff_equal_is_fine() -> None:
    hook = one_webhook("retry: {initial_backoff: 1m, max_backoff: 60}")
    assert hook.retry == RetryConfig(60.0, 60.0, 86400.0)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ("{Content-Type: text/plain}", f"headers.Content-Type: {RESERVED}"),
        ("{webhook-signature: x}", f"headers.webhook-signature: {RESERVED}"),
        ("{Content-Length: '5'}", f"headers.Content-Length: {RESERVED}"),
        ("{X-A: a, x-a: b}", "headers.x-a: is given twice (header names ignore case)"),
        ('{X-A: "a\\nb"}', "headers.X-A: value must not contain line breaks or control characters"),
        ("{'Bad Name': a}", "headers.Bad Name: is not a header name: use letters, digits and "
         "!#$%&'*+-.^_`|~"),
        ("{X-A: 5}", "headers.X-A: must be a string, not an integer"),
        ("[a]", "headers: must be a mapping, not a list"),
    ],
)  # fmt: skip
def test_header_rules(headers: str, message: str) -> None:
    assert problems(webhook(f"headers: {headers}")) == [f"webhooks[0].{message}"]


def test_header_values_may_hold_tabs_and_any_text() -> None:
    hook = one_webhook('headers: {X-A: "a\\tb ünï ${NOT SUBSTITUTED}"}')
    assert hook.headers == (("X-A", "a\tb ünï ${NOT SUBSTITUTED}"),)


@pytest.mark.parametrize(
    ("signing", "message"),
    [
        ("{}", "signing: must set either secret or secrets (a non-empty list), not both"),
        (f"{{secret: {SECRET}, secrets: [{SECRET}]}}", "signing: must set either secret or "
         "secrets (a non-empty list), not both"),
        ("{secrets: []}", "signing.secrets: must not be empty"),
        ("{secret: ''}", "signing.secret: must not be empty"),
        ("{secret: whsec_plain-text!}", f"signing.secret: {WHSEC}"),
        (f"{{secrets: [{SECRET}, whsec_]}}", f"signing.secrets[1]: {WHSEC}"),
        ("{secrets: [whsec_a]}", f"signing.secrets[0]: {WHSEC}"),
        (f"{{secret: {SECRET}, key: y}}", "signing.key: unknown key"),
    ],
)  # fmt: skip
def test_signing_rules(signing: str, message: str) -> None:
    assert problems(webhook(f"signing: {signing}")) == [f"webhooks[0].{message}"]


def test_signing_secret_forms() -> None:
    # As agent.sinks.signing: whsec_ + base64 of the key, or a raw key without the prefix.
    raw = "a raw key, any text!"
    assert one_webhook(f"signing: {{secret: '{raw}'}}").signing == SigningConfig((raw,))
    other = "whsec_" + base64.b64encode(b"k" * 24).decode()
    rotating = one_webhook(f"signing: {{secrets: [{SECRET}, {other}]}}").signing
    assert rotating == SigningConfig((SECRET, other))


def test_duplicate_webhook_names() -> None:
    text = webhook() + webhook_item() + webhook_item()
    assert problems(text) == [
        "webhooks[1].name: 'w' is also the name of webhooks[0]",
        "webhooks[2].name: 'w' is also the name of webhooks[0]",
    ]


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{name: a, paths: [x]}", "sources[0].type: is required"),
        ("{name: a, type: pipe}", "sources[0].type: must be one of file, unix_socket, not 'pipe'"),
        ("{type: file, paths: [x]}", "sources[0].name: is required"),
        ("{name: a, type: file}", "sources[0].paths: is required"),
        ("{name: a, type: file, paths: []}", "sources[0].paths: must not be empty"),
        ("{name: a, type: file, paths: x}", "sources[0].paths: must be a list, not a string"),
        ("{name: a, type: file, paths: [x], mode: stream}", "sources[0].mode: unknown key"),
        ("{name: a, type: unix_socket, path: x, watch: poll}", "sources[0].watch: unknown key"),
        ("{name: a, type: file, paths: [x], format: json}", "sources[0].format: must be one of "
         "native, modsecurity, not 'json'"),
        ("{name: a, type: file, paths: [x], start_at: middle}", "sources[0].start_at: must be one "
         "of beginning, end, not 'middle'"),
        ("{name: a, type: file, paths: [x], watch: fanotify}", "sources[0].watch: must be one of "
         "auto, inotify, poll, not 'fanotify'"),
        ("{name: a, type: file, paths: [x], max_line_bytes: 1023}", "sources[0].max_line_bytes: "
         "must be at least 1KiB"),
        ("{name: a, type: unix_socket, path: x, mode: dgram}", "sources[0].mode: must be one of "
         "stream, datagram, not 'dgram'"),
        ("{name: a, type: unix_socket, path: x, socket_mode: '0999'}",
         f"sources[0].socket_mode: {OCTAL}"),
        ("{name: a, type: unix_socket, path: x, socket_mode: 0660}",
         f"sources[0].socket_mode: {OCTAL}, not an integer"),
        ("{name: a, type: file, paths: [x], max_line_bytes: 1M}",
         f"sources[0].max_line_bytes: {SIZE}"),
        ("{name: a, type: file, paths: [x], rotate_wait: soon}",
         f"sources[0].rotate_wait: {DURATION}"),
        ("{name: a, type: unix_socket, path: x, max_connections: 0}", "sources[0].max_connections: "
         "must be at least 1"),
        ("x", "sources[0]: must be a mapping, not a string"),
    ],
)  # fmt: skip
def test_source_rules(source: str, message: str) -> None:
    assert problems(f"sources: [{source}]\n") == [message]


def test_source_keys_of_the_other_type() -> None:
    assert problems("sources: [{name: a, type: file, path: x}]") == [
        "sources[0].paths: is required",
        "sources[0].path: unknown key",
    ]
    assert problems("sources: [{name: a, type: unix_socket, paths: [x]}]") == [
        "sources[0].path: is required",
        "sources[0].paths: unknown key",
    ]


def test_source_max_line_bytes_of_exactly_1kib() -> None:
    text = "sources: [{name: a, type: file, paths: [x], max_line_bytes: 1KiB}]"
    (source,) = parse_config(text, {}).sources
    assert source == FileSourceConfig("a", ("x",), max_line_bytes=KIB)


def test_duplicate_source_names_across_types() -> None:
    text = "sources:\n  - {name: a, type: file, paths: [x]}\n"
    text += "  - {name: a, type: unix_socket, path: y}\n"
    assert problems(text) == ["sources[1].name: 'a' is also the name of sources[0]"]


def test_a_source_and_a_webhook_may_share_a_name() -> None:
    text = webhook(name="a") + "sources: [{name: a, type: file, paths: [x]}]\n"
    config = parse_config(text, {})
    assert config.sources[0].name == config.webhooks[0].name == "a"


# --- the rest ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: {listen: 9717}", "metrics.listen: must be HOST:PORT, like 127.0.0.1:9717, "
         "0.0.0.0:9717 or [::1]:9717, not an integer"),
        ("metrics: {listen: 'localhost'}", "metrics.listen: must be HOST:PORT, like "
         "127.0.0.1:9717, 0.0.0.0:9717 or [::1]:9717"),
        ("metrics: {listen: 'h:65536'}", "metrics.listen: port must be 0 to 65535"),
        ("metrics: {listen: '[1::2::3]:80'}", "metrics.listen: has an invalid IPv6 address between "
         "[ and ]"),
        ("log: {level: warn}", "log.level: must be one of debug, info, warning, error, not 'warn'"),
        ("log: {format: yaml}", "log.format: must be one of json, text, not 'yaml'"),
        ("spool: {when_full: drop_newest}", "spool.when_full: must be one of block, drop_oldest, "
         "not 'drop_newest'"),
        ("spool: {max_bytes: 0}", "spool.max_bytes: must be at least 2MiB"),
        ("spool: {max_bytes: 1MiB}", "spool.max_bytes: must be at least 2MiB"),
        ("shutdown_timeout: 10 s", f"shutdown_timeout: {DURATION}"),
        ("spool: {max_bytes: lots}", f"spool.max_bytes: {SIZE}"),
        ("console_url: my.wallarm.com", "console_url: must be an http or https URL"),
        ("state_dir: ''", "state_dir: must not be empty"),
    ],
)  # fmt: skip
def test_top_level_rules(text: str, message: str) -> None:
    assert problems(text + "\n") == [message]


def test_console_url_may_be_http() -> None:
    assert parse_config("console_url: http://console.local/", {}).console_url == (
        "http://console.local"
    )


# --- hostile YAML: alias bombs (issue #7, item 16) -------------------------------------

#: The "billion laughs": nine levels of nine aliases, 9**9 strings once expanded.
BILLION_LAUGHS = "webhooks:\n  - name: a\n    url: https://x.example/\n    events: [hit]\n" + (
    "    headers:\n"
    + '      l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"      l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 10))
)


def merge_bomb(levels: int) -> str:
    """Each mapping merges the one before twice: 2**levels keys once merged."""
    lines = ["      m0: &m0 {k0: 1}"]
    for n in range(1, levels):
        lines.append(f"      m{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}], k{n}: 1}}")
    return "webhooks:\n  - name: a\n    url: https://x.example/\n    events: [hit]\n" + (
        "    headers:\n" + "\n".join(lines) + "\n"
    )


@pytest.mark.parametrize("text", [BILLION_LAUGHS, merge_bomb(40)], ids=["aliases", "merges"])
def test_an_alias_bomb_is_refused_at_the_root_within_a_second(text: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        parse_config(text, {}, source="bomb.yaml")
    assert time.monotonic() - started < 1.0
    assert refused.value.problems == (
        Problem(
            "",
            f"bomb.yaml: its aliases expand it to more than {MAX_EXPANDED_NODES} values;"
            " refusing to read it (an alias bomb?)",
        ),
    )


def limit_memory() -> None:
    """preexec_fn: at most 256 MiB of address space (the bomb expanded needs gigabytes)."""
    resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_refuse_an_alias_bomb_quickly_in_bounded_memory(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(f"state_dir: {tmp_path}/state\n" + BILLION_LAUGHS)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "agent", command, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aliases expand it to more than" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 5  # measured: 0.3 s for check-config, 0.7 s for run (interpreter start)


def test_substitution_shares_an_alias_target_instead_of_copying_it() -> None:
    document = read_yaml("a: &x [{k: '${V}'}, 2]\nb: *x\nc: [*x, *x]\n", "<t>")
    result = substitute_env(document.data, {"V": "s3cret"})
    data = result.data
    assert data["a"] == [{"k": "s3cret"}, 2]
    assert data["b"] is data["a"] and data["c"][0] is data["a"] and data["c"][1] is data["a"]
    # Every location the value reaches through an alias is known to hold the environment's.
    assert result.touched == {("a", 0, "k"), ("b", 0, "k"), ("c", 0, 0, "k"), ("c", 1, 0, "k")}


def test_a_value_from_the_environment_is_not_echoed_where_an_alias_repeats_it() -> None:
    text = (
        "webhooks:\n"
        "  - {name: a, url: https://a.example/x, events: [hit], method: &m '${METHOD}'}\n"
        "  - {name: b, url: https://b.example/x, events: [hit], method: *m}\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, {"METHOD": "hunter2"})
    assert "hunter2" not in str(refused.value)
    assert [p.path for p in refused.value.problems] == ["webhooks[0].method", "webhooks[1].method"]


def test_a_key_merged_in_may_be_overridden() -> None:
    config = parse_config(
        "webhooks:\n"
        "  - &base {name: a, url: 'https://a.example/x', events: [hit]}\n"
        "  - <<: *base\n"
        "    name: b\n",
        {},
    )
    assert [(hook.name, hook.url) for hook in config.webhooks] == [
        ("a", "https://a.example/x"),
        ("b", "https://a.example/x"),
    ]


def test_a_document_nested_too_deeply_is_refused() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("webhooks: " + "[" * 800 + "]" * 800, {})


@pytest.mark.slow
def test_the_bound_leaves_room_for_2000_webhooks_with_every_setting() -> None:
    hook = (
        "  - name: hook{n}\n"
        "    url: https://siem{n}.example.com/hooks/wallarm\n"
        "    method: POST\n"
        "    headers: {{Authorization: 'Bearer abc', X-Tenant: 't{n}', X-Other: 'o'}}\n"
        "    tls: {{verify: true, ca_file: /etc/ssl/ca.pem}}\n"
        "    request_timeout: 15s\n"
        "    connect_timeout: 20s\n"
        "    events: [hit, vulnerability, system, scope]\n"
        "    enabled: true\n"
        "    batch: {{max_events: 500, max_bytes: 1MiB, max_wait: 200ms}}\n"
        "    retry: {{initial_backoff: 1s, max_backoff: 5m, max_elapsed: 24h}}\n"
        "    signing: {{secrets: [whsec_a, whsec_b]}}\n"
        "    payload: classic\n"
        "    body: json_array\n"
        "    filter: {{block_status: [blocked], attack_types: [sqli, xss],"
        " domains: ['*.example.com'], threats: [High, Medium]}}\n"
    )
    text = "webhooks:\n" + "".join(hook.format(n=n) for n in range(2000))
    node = yaml.SafeLoader(text).get_single_node()
    assert node is not None
    size = expanded_size(node, MAX_EXPANDED_NODES)
    assert 100_000 < size < MAX_EXPANDED_NODES / 3
