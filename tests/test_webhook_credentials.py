"""Credentials a webhook's config gives: a URL's ``user:password@`` becomes Basic auth,
header values HTTP cannot send are refused by check-config, and none of it is ever
printed (CONTRACT §3: header values and secrets are never printed, logged or exposed)."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.telemetry import JSONFormatter
from tests.agent_support import wait_until
from tests.delivery_support import hit, running_sinks
from tests.support.agent_process import REPO
from tests.support.receiver import Receiver

PASSWORD = "pa:ss@wörd/9"  # a colon, an at sign and a non-ASCII letter
USERINFO = "al%20ice:pa%3Ass%40w%C3%B6rd%2F9"  # the same, percent-encoded


def config_text(url: str, headers: str = "") -> str:
    return f"webhooks:\n  - name: soc\n    url: {url}\n    events: [hit]\n" + (
        f"    headers: {headers}\n" if headers else ""
    )


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


# --- user:password@ in the URL ----------------------------------------------------------


def test_userinfo_becomes_basic_auth_and_leaves_the_url() -> None:
    config = parse_config(config_text(f"https://{USERINFO}@h.example:8443/x?q=1"), {})
    (hook,) = config.webhooks
    assert hook.url == "https://h.example:8443/x?q=1"
    expected = base64.b64encode(f"al ice:{PASSWORD}".encode()).decode()
    assert hook.headers == (("Authorization", f"Basic {expected}"),)
    assert "ss%40" not in repr(config) and expected not in repr(config)


def test_userinfo_without_a_password_and_an_ipv6_host() -> None:
    (hook,) = parse_config(config_text("http://bob@[::1]:8080/x"), {}).webhooks
    assert hook.url == "http://[::1]:8080/x"
    assert hook.headers == (("Authorization", "Basic " + base64.b64encode(b"bob:").decode()),)


def test_the_receiver_gets_basic_auth_from_the_url(tmp_path: Path, receiver: Receiver) -> None:
    url = receiver.url.replace("http://", f"http://{USERINFO}@")
    (hook,) = parse_config(config_text(url), {}).webhooks
    with running_sinks(tmp_path, [hook], [hit(1)]):
        assert receiver.wait_for(1, timeout=10)
    (request,) = receiver.requests
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"al ice:{PASSWORD}"
    assert request.path == "/hook"


@pytest.mark.parametrize("header", ["Authorization", "authorization"])
def test_userinfo_and_an_authorization_header_is_an_error_at_the_url(
    tmp_path: Path, header: str
) -> None:
    text = config_text(f"https://{USERINFO}@h.example/x", f'{{{header}: "Bearer t0ken-xyz"}}')
    done = check_config(tmp_path, text)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "webhooks[0].url: has a user:password@ part, which becomes an Authorization header,"
        " and headers set Authorization too: give the credentials once"
    ]
    for secret in ("t0ken-xyz", "pa%3Ass", "al%20ice"):
        assert secret not in done.stderr + done.stdout


def test_an_empty_userinfo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("https://@h.example/x"), {})
    assert [str(p) for p in caught.value.problems] == [
        "webhooks[0].url: has an empty user:password@ part"
    ]


def test_the_credentials_are_never_logged(
    tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://{USERINFO}@127.0.0.1:{closed_port}/hook"
    (hook,) = parse_config(config_text(url), {}).webhooks
    with running_sinks(tmp_path, [hook], [hit(1)]) as run:
        assert wait_until(
            lambda: (
                run.value("tailhook_webhook_requests_total", webhook="soc", code="connection") >= 2
            ),
            5,
        )
    # As the log lines reach stderr: caplog.text leaves out the fields, where a leak
    # would most likely be.
    logged = "\n".join(JSONFormatter().format(record) for record in caplog.records)
    assert "A webhook request failed" in logged
    assert '"error":' in logged  # the fields are there
    token = hook.headers[0][1].removeprefix("Basic ")
    for secret in ("pa%3Ass", "pa:ss", "al%20ice", "al ice", token):
        assert secret not in logged


# --- header values HTTP cannot send -----------------------------------------------------


def test_a_header_value_outside_latin1_is_an_error_at_its_path(tmp_path: Path) -> None:
    text = config_text("https://h.example/x", '{X-Ok: "café", X-Team: "Ωmega-t0k"}')
    done = check_config(tmp_path, text)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "webhooks[0].headers.X-Team: value must be Latin-1 text: HTTP cannot send other"
        " characters in a header"
    ]
    assert "Ωmega" not in done.stderr and "t0k" not in done.stderr


def test_a_latin1_header_value_is_sent_as_latin1(tmp_path: Path, receiver: Receiver) -> None:
    (hook,) = parse_config(config_text(receiver.url, '{X-Team: "café ß"}'), {}).webhooks
    with running_sinks(tmp_path, [hook], [hit(1)]):
        assert receiver.wait_for(1, timeout=10)
    # http.server decodes header bytes as Latin-1, as HTTP says
    assert receiver.requests[0].headers["X-Team"] == "café ß"
