"""Source settings added for hostile environments: ``idle_timeout`` of a unix_socket
source (the glob rule about ``state_dir`` is in ``test_state_dir_globs``)."""

from __future__ import annotations

import pytest

from agent.config import SocketSourceConfig, parse_config
from agent.errors import ConfigError

SOCKET = "sources:\n  - {name: s, type: unix_socket, path: /run/s.sock%s}\n"


def socket_source(extra: str = "") -> SocketSourceConfig:
    (source,) = parse_config(SOCKET % extra, {}).sources
    assert isinstance(source, SocketSourceConfig)
    return source


def test_idle_timeout_defaults_to_five_minutes() -> None:
    assert socket_source().idle_timeout == 300.0


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90.0), ("10m", 600.0), ("1.5", 1.5)])
def test_idle_timeout_takes_a_duration(value: str, seconds: float) -> None:
    assert socket_source(f", idle_timeout: {value}").idle_timeout == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be more than 0"),
        ("0s", "must be more than 0"),
        ("soon", "must be a duration: seconds as a number, or a string with a unit"),
    ],
)
def test_idle_timeout_must_be_a_duration_over_0(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(SOCKET % f", idle_timeout: {value}", {})
    (problem,) = caught.value.problems
    assert problem.path == "sources[0].idle_timeout"
    assert problem.message.startswith(message)


def test_idle_timeout_is_not_a_file_source_key() -> None:
    text = "sources:\n  - {name: f, type: file, paths: [/a.log], idle_timeout: 5s}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert [str(p) for p in caught.value.problems] == ["sources[0].idle_timeout: unknown key"]
