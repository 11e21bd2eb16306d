"""systemd's notify protocol (``agent.notify``) against real ``AF_UNIX`` datagram sockets:
the messages, the path and abstract addresses, ``WATCHDOG_USEC``/``WATCHDOG_PID``, a
socket that goes away, the status line and the watchdog thread."""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.notify import Notifier, StatusLine, Watchdog, notify_address, watchdog_interval
from agent.telemetry import Metrics
from tests.support.notify_socket import NotifySocket

#: Once unhealthy is reported (WATCHDOG_USEC 400000: a ping every 0.2 s), five
#: half-intervals in which no ping may come: a watchdog that went on would send five.
NO_PING_WINDOW = 1.0


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_every_message_reaches_the_socket_systemd_names(tmp_path: Path, abstract: bool) -> None:
    with NotifySocket(None if abstract else tmp_path / "notify") as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env})
        assert notifier.enabled
        before = monotonic_usec()
        assert notifier.ready("running: 1 sources")
        assert notifier.reloading()
        after = monotonic_usec()
        assert notifier.ready()
        assert notifier.status("12 events/s read,\nbacklog 3")
        assert notifier.ping()
        assert notifier.stopping("stopping", extend_timeout=30)
        systemd.wait_count("STATUS", 3)
        systemd.wait_for("STOPPING")
        raw = systemd.raw()
    assert raw[0] == b"READY=1\nSTATUS=running: 1 sources"
    reloading = raw[1].decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    key, value = reloading[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert raw[2:] == [
        b"READY=1",
        b"STATUS=12 events/s read, backlog 3",  # always one line
        b"WATCHDOG=1",
        b"STOPPING=1\nEXTEND_TIMEOUT_USEC=30000000\nSTATUS=stopping",
    ]


def test_an_abstract_address_is_the_name_after_a_nul_byte() -> None:
    assert notify_address("@tailhook") == b"\0tailhook"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    for bad in ("run/notify", "@", "vsock:2:1234"):
        with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
            notify_address(bad)


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.ping()


def test_a_notify_socket_that_is_no_address_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.notify"):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "relative/notify"})
    assert not notifier.enabled
    [record] = caplog.records
    assert record.message == "systemd is not notified"
    assert "absolute path or an @abstract name" in record.fields["error"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ],
    ids=["unset", "no-pid", "our-pid", "another-pid"],
)
def test_the_watchdog_interval_is_ours_only_when_watchdog_pid_says_so(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, os.getpid()) == expected


@pytest.mark.parametrize("environ", [{"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}])
def test_a_bad_watchdog_usec_turns_the_watchdog_off_with_a_warning(
    tmp_path: Path, environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        watchdog_interval(environ, os.getpid())
    with NotifySocket(tmp_path / "notify") as systemd, caplog.at_level(logging.WARNING):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env, **environ})
    assert notifier.enabled and notifier.watchdog_interval is None
    assert "watchdog is not pinged" in caplog.text


def test_a_socket_that_went_away_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    with NotifySocket(path) as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.env})
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="agent.notify"):
        assert not notifier.ping()
        assert not notifier.ping()
        assert caplog.text.count("Cannot notify systemd") == 1
        with NotifySocket(path) as systemd:
            assert notifier.ping()
            systemd.wait_for("WATCHDOG")
    assert "Notifying systemd works again" in caplog.text


def test_the_status_line_gives_rates_backlog_and_failing_webhooks() -> None:
    metrics = Metrics(CollectorRegistry())
    now = [100.0]
    line = StatusLine(metrics, clock=lambda: now[0])
    assert line.text() == "0.0 events/s read, 0.0 events/s delivered, backlog 0"

    metrics.events.labels("waf", "hit", "accepted").inc(500)
    metrics.events.labels("waf", "hit", "invalid_json").inc(7)  # rejected: not counted
    metrics.delivered.labels(webhook="soc", event_type="hit").inc(40)
    metrics.backlog.labels(webhook="soc").set(460)
    metrics.backlog.labels(webhook="siem").set(12)
    metrics.requests.labels(webhook="soc", code="200").inc()
    metrics.requests.labels(webhook="siem", code="503").inc(2)
    now[0] += 10
    assert line.text() == (
        "50 events/s read, 4.0 events/s delivered, backlog 472; failing webhooks: siem"
    )
    now[0] += 10  # no request at all (siem in backoff): still failing
    assert line.text().endswith("; failing webhooks: siem")
    metrics.requests.labels(webhook="siem", code="timeout").inc()
    metrics.requests.labels(webhook="soc", code="connection").inc()
    now[0] += 10
    assert line.text().endswith("; failing webhooks: siem, soc")
    metrics.requests.labels(webhook="siem", code="204").inc()
    metrics.requests.labels(webhook="siem", code="503").inc()  # some failed, one got through
    now[0] += 10
    assert line.text().endswith("; failing webhooks: soc")


def test_the_watchdog_pings_every_half_interval_while_healthy_and_stops_when_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = {"ok": True}

    def healthy() -> tuple[bool, str]:
        return (True, "ok") if health["ok"] else (False, "soc stuck for 3 s past its budget")

    with NotifySocket(tmp_path / "notify") as systemd:
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": systemd.env, "WATCHDOG_USEC": "400000"}
        )
        watchdog = Watchdog(notifier, healthy, lambda: "7 events/s read", status_every=0.3)
        watchdog.start()
        try:
            pings = systemd.wait_count("WATCHDOG", 5)
            gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
            assert 0.17 <= statistics.median(gaps) <= 0.3 and min(gaps) >= 0.15, gaps  # 0.4 / 2
            assert systemd.wait_for("STATUS").fields["STATUS"] == "7 events/s read"

            with caplog.at_level(logging.ERROR, logger="agent.notify"):
                health["ok"] = False
                why = "unhealthy: soc stuck for 3 s past its budget"
                unhealthy = systemd.wait_for("STATUS", value=why)
                time.sleep(NO_PING_WINDOW)
                late = [d for d in systemd.with_key("WATCHDOG") if d.at > unhealthy.at]
                assert late == []
                count = len(systemd.with_key("WATCHDOG"))
            assert caplog.text.count("no longer pinged") == 1

            health["ok"] = True
            systemd.wait_count("WATCHDOG", count + 2)
            status = systemd.wait_count("STATUS", len(systemd.with_key("STATUS")) + 1)[-1]
            assert not status.fields["STATUS"].startswith("unhealthy")
        finally:
            watchdog.stop()
