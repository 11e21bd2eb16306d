"""The real ``tailhook run`` under ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``, as systemd
runs it: READY=1 once ``/readyz`` answers 200, STATUS= lines, WATCHDOG=1 every half
interval, STOPPING=1 on SIGTERM; every datagram from the main process (NotifyAccess=main).
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from pathlib import Path

import pytest
import requests

from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.notify_socket import Datagram, NotifySocket
from tests.support.receiver import Receiver

STATUS_LINE = re.compile(
    r"[0-9.]+ events/s read, [0-9.]+ events/s delivered, backlog \d+(; failing webhooks: .+)?"
)


class ReadinessAtReady:
    """Called in the socket's thread as each datagram arrives: at READY=1, before anything
    else happens, finds the agent's metrics address in its log and asks ``/readyz``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.readyz: int | str | None = None

    def __call__(self, datagram: Datagram) -> None:
        if "READY" not in datagram.fields or self.readyz is not None:
            return
        for line in self.log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("message") == "tailhook is running":
                base = entry["metrics"].removesuffix("/metrics")
                self.readyz = requests.get(base + "/readyz", timeout=5).status_code
                return
        self.readyz = "READY=1 came before tailhook said it is running"


def start_agent(tmp_path: Path, url: str) -> tuple[AgentProcess, Path]:
    logs = tmp_path / "detections.log"
    logs.write_bytes(b"")
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(tmp_path / "state", url, [str(logs)]))
    return AgentProcess(config, tmp_path / "agent.log"), logs


@pytest.mark.slow
def test_run_notifies_ready_status_watchdog_and_stopping_on_a_path_socket(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = ReadinessAtReady(tmp_path / "agent.log")
    with NotifySocket(tmp_path / "notify", on_datagram=check) as systemd:
        monkeypatch.setenv("NOTIFY_SOCKET", systemd.env)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
        agent, logs = start_agent(tmp_path, receiver.url)
        with agent:
            ready = systemd.wait_for("READY")
            assert check.readyz == 200
            assert ready.fields["STATUS"] == "running: 1 sources, 1 webhooks"

            with logs.open("ab") as out:
                out.write(hit_line(1) + b"\n")
            assert receiver.wait_for(1, timeout=10)
            assert received_ids(receiver.bodies_json()) == ["hit-1"]
            # READY=1 carried the first STATUS=; the next comes 5 s later, pings around it.
            assert wait_until(lambda: len(systemd.with_key("STATUS")) >= 2, 15)
            status = systemd.with_key("STATUS")[1]
            assert STATUS_LINE.fullmatch(status.fields["STATUS"]), status.fields
            pings = systemd.with_key("WATCHDOG")
            assert pings[0].at >= ready.at
            gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
            assert len(gaps) >= 8 and 0.4 <= statistics.median(gaps) <= 0.6, gaps

            assert agent.terminate() == 0
        stopping = systemd.wait_for("STOPPING")
        assert stopping.fields["STATUS"] == "stopping: sending what can be sent"
        # shutdown_timeout: 5s in this config, plus 20 s for sources and the spool
        assert stopping.fields["EXTEND_TIMEOUT_USEC"] == "25000000"
        assert {d.pid for d in systemd.datagrams} == {agent.pid}
        kinds = [next(iter(d.fields)) for d in systemd.datagrams]  # the first line of each
        assert kinds[0] == "READY" and kinds[-1] == "STOPPING"
        assert set(kinds) == {"READY", "WATCHDOG", "STATUS", "STOPPING"}


@pytest.mark.slow
def test_run_notifies_an_abstract_socket_and_pings_only_its_own_watchdog(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NotifySocket() as systemd:  # NOTIFY_SOCKET=@tailhook-test-...
        assert systemd.env.startswith("@")
        monkeypatch.setenv("NOTIFY_SOCKET", systemd.env)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")
        monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is another process's
        agent, _logs = start_agent(tmp_path, receiver.url)
        with agent:
            ready = systemd.wait_for("READY")
            # Five intervals: no ping for a watchdog that is not ours.
            assert not wait_until(lambda: bool(systemd.with_key("WATCHDOG")), 2.0)
            assert agent.terminate() == 0
        systemd.wait_for("STOPPING")
        assert ready.pid == agent.pid
