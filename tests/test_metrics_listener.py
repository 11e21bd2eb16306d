"""The metrics listener under hostile clients: idle, trickling, resetting, too many; its
address already taken. In-process against ``MetricsServer`` where a timeout must be
short, and against the real ``tailhook run`` for the whole agent's behaviour."""

from __future__ import annotations

import contextlib
import logging
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter

from agent import httpd
from agent.httpd import MAX_CONNECTIONS, MetricsServer
from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import REPO, AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

#: Before a client resets its half-sent request: time for the server to begin reading it,
#: so the reset lands mid-request (nothing the server exposes says it has begun).
HALF_REQUEST_READ = 0.1


def ok() -> tuple[bool, str]:
    return True, "ok"


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    refused = Counter("refused", "Connections refused.", registry=registry)
    listener = MetricsServer("127.0.0.1", 0, registry, ok, ok, refused)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


def connect(server: MetricsServer, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def closed_by_server(conn: socket.socket) -> bool:
    """The server closed ``conn``: an end of stream (or a reset), not a timeout."""
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def scrape(port: int, timeout: float = 2.0) -> int | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout).status_code
    except requests.RequestException:
        return None


def reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashed."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# --- bounds ------------------------------------------------------------------------------


def test_connections_beyond_the_bound_are_closed_at_once_and_counted(
    server: MetricsServer,
) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        with connect(server) as extra:
            started = time.monotonic()
            assert closed_by_server(extra)
            assert time.monotonic() - started < 1.0
        assert server.registry.get_sample_value("refused_total") == 1
        assert scrape(server.port) is None  # every slot is still held
    finally:
        for conn in held:
            conn.close()
    assert wait_until(lambda: scrape(server.port) == 200, 5)


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_idle_timeout(server: MetricsServer) -> None:
    with connect(server, timeout=15) as idle, connect(server, timeout=15) as keep_alive:
        started = time.monotonic()
        # Idle from the start, or between two requests of one connection.
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nok\n"):  # the whole answer, body included
            answer += keep_alive.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        assert closed_by_server(idle)
        assert closed_by_server(keep_alive)
        assert httpd.IDLE_SECONDS - 0.5 < time.monotonic() - started < httpd.IDLE_SECONDS + 3


def test_a_client_trickling_its_request_is_cut_off_at_the_request_deadline(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpd._Handler, "timeout", 1.0)
    monkeypatch.setattr(httpd, "REQUEST_SECONDS", 1.5)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with connect(server) as slow:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # reset by the server while sending
            for byte in request:  # a byte every 0.2 s: never idle for the idle timeout
                if closed_yet(slow) or time.monotonic() - started > 8:
                    break
                slow.sendall(bytes([byte]))
                time.sleep(0.2)
        assert closed_by_server(slow)
        assert time.monotonic() - started < 4.0


def closed_yet(conn: socket.socket) -> bool:
    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


# --- errors go to the log, never raw to stderr -----------------------------------------


def test_a_client_resetting_mid_request_prints_nothing_and_logs_at_debug(
    server: MetricsServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.httpd")
    for _ in range(3):
        conn = connect(server)
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")  # no end of headers: the server waits
        time.sleep(HALF_REQUEST_READ)
        reset(conn)
    assert wait_until(lambda: len(caplog.records) >= 3, 5)
    assert {r.levelname for r in caplog.records} == {"DEBUG"}
    assert wait_until(lambda: scrape(server.port) == 200, 5)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


class _Broken:
    def collect(self) -> list[object]:
        raise RuntimeError("a collector failed")


def test_a_failing_answer_is_a_warning_with_its_traceback_not_raw_stderr(
    server: MetricsServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server.registry.register(_Broken())  # type: ignore[arg-type]
    assert scrape(server.port) is None  # the connection is closed without an answer
    assert wait_until(lambda: any(r.levelname == "WARNING" for r in caplog.records), 5)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == "Answering a metrics request failed"
    assert warning.exc_info is not None and "a collector failed" in str(warning.exc_info[1])
    out, err = capfd.readouterr()
    assert err == "" and out == ""


# --- the real agent --------------------------------------------------------------------


def free_port_in_use() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def test_a_metrics_address_in_use_exits_2_saying_so(tmp_path: Path, receiver: Receiver) -> None:
    with free_port_in_use() as taken:
        port = taken.getsockname()[1]
        text = file_source_yaml(tmp_path / "state", receiver.url, [f"{tmp_path}/*.log"])
        config = tmp_path / "config.yaml"
        config.write_text(text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}"))
        done = subprocess.run(
            [sys.executable, "-m", "agent", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"metrics.listen: 127.0.0.1:{port} is in use" in done.stderr
    assert "Traceback" not in done.stderr


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def enough_descriptors(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"needs {count} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


@pytest.mark.slow
def test_a_thousand_idle_connections_starve_neither_the_agent_nor_the_metrics(
    tmp_path: Path, receiver: Receiver
) -> None:
    enough_descriptors(1200)
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(tmp_path / "state", receiver.url, [f"{logs}/*.log"]))
    idle: list[socket.socket] = []
    with AgentProcess(config, tmp_path / "stderr.log") as agent:
        port = int(agent.base.rsplit(":", 1)[1])
        # One delivery first: the webhook's deadline watchdog is a thread of its own.
        (logs / "first.log").write_bytes(hit_line(0) + b"\n")
        assert receiver.wait_for(1, timeout=10)
        threads_before = threads_of(agent.pid)
        failed = 0
        try:
            started = time.monotonic()
            for _ in range(1000):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                except OSError:
                    failed += 1
            quick = time.monotonic() - started < httpd.IDLE_SECONDS
            most_threads = threads_of(agent.pid)
            written = time.monotonic()
            (logs / "new.log").write_bytes(hit_line(1) + b"\n")
            assert receiver.wait_for(lambda reqs: len(reqs) >= 2, 5)
            delivered_after = time.monotonic() - written
            most_threads = max(most_threads, threads_of(agent.pid))
            answered = wait_until(lambda: scrape(port) == 200, httpd.IDLE_SECONDS + 5, 0.2)
            most_threads = max(most_threads, threads_of(agent.pid))
        finally:
            for conn in idle:
                conn.close()
        assert answered, "/metrics did not answer within the idle timeout"
        assert delivered_after < 3.0
        assert most_threads <= threads_before + MAX_CONNECTIONS
        refused = agent.metric("tailhook_metrics_connections_refused_total")
        if quick:  # all made before a held slot's idle timeout: the rest were refused
            assert refused is not None and refused >= 1000 - failed - MAX_CONNECTIONS
        assert agent.terminate() == 0
    assert received_ids(receiver.bodies_json()) == ["hit-0", "hit-1"]
    assert "no free slot" in agent.log_since()
