"""Nothing but log lines reaches stderr: an uncaught exception in any thread, an
exception Python cannot raise, a warning, a library's log record, and the metrics
listener's errors all become JSON log lines, the traceback a field."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from agent.httpd import MAX_CONNECTIONS
from tests.agent_support import hit_line, wait_until
from tests.support.agent_process import REPO, AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

PROVOKE = textwrap.dedent(
    """
    import logging, threading, warnings
    from agent.telemetry import setup_logging

    setup_logging("info", "json")

    def fail():
        raise ZeroDivisionError("in a thread")

    thread = threading.Thread(target=fail, name="doomed")
    thread.start()
    thread.join()

    warnings.warn("a library is unhappy", UserWarning)

    class Leaky:
        def __del__(self):
            raise ValueError("in __del__")

    leaky = Leaky()
    del leaky

    logging.getLogger("urllib3.connectionpool").warning("a library's own warning")
    logging.getLogger("urllib3.connectionpool").info("a library's chatter: not shown")
    logging.getLogger("agent.test").warning("%d items", "not a number")
    raise RuntimeError("at the top")
    """
)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON log line; fails on any other line."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line on stderr: {line!r}\n{text}") from None
        assert {"time", "level", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def test_uncaught_exceptions_warnings_and_library_logs_are_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROVOKE], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    entries = json_lines(done.stderr)
    by_message = {entry["message"]: entry for entry in entries}
    thread = by_message["A thread ended on an unexpected error"]
    assert thread["level"] == "error" and thread["thread"] == "doomed"
    assert "ZeroDivisionError: in a thread" in thread["traceback"]
    (warned,) = [e for e in entries if e["logger"] == "py.warnings"]
    assert "UserWarning: a library is unhappy" in warned["message"]
    (unraisable,) = [e for e in entries if "in __del__" in e.get("traceback", "")]
    assert unraisable["level"] == "warning"
    assert by_message["a library's own warning"]["logger"] == "urllib3.connectionpool"
    assert "a library's chatter: not shown" not in by_message
    last = entries[-1]
    assert last["message"] == "tailhook stopped on an unexpected error"
    assert last["level"] == "critical"
    assert "RuntimeError: at the top" in last["traceback"]
    broken = by_message["A log line could not be formatted; its message is a field"]
    assert broken["record_message"] == "%d items"
    assert "TypeError" in broken["traceback"]
    assert len(entries) == 6


def reset_mid_request(port: int) -> None:
    """A client that sends half a request, then crashes (a TCP reset)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.05)  # the server has begun reading it: the reset comes mid-request
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def send_and_close(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_the_agent_writes_nothing_but_json_lines_whatever_its_clients_do(
    tmp_path: Path, receiver: Receiver
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_bytes(hit_line(1) + b"\nnot json\n")
    os.symlink(logs / "nowhere", logs / "gone.log")
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(tmp_path / "state", receiver.url, [f"{logs}/*.log"]))
    with AgentProcess(config, tmp_path / "stderr.log") as agent:
        port = int(agent.base.rsplit(":", 1)[1])
        for _ in range(3):
            reset_mid_request(port)
        assert b"Error code: 400" in send_and_close(port, b"GET / HTTP/x\r\n\r\n")
        assert send_and_close(port, b"BREW / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 501")
        assert send_and_close(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")[:12] in (
            b"HTTP/1.1 414",
            b"",  # reset while the rest of the line was still arriving
        )
        held = [
            socket.create_connection(("127.0.0.1", port), timeout=5)
            for _ in range(MAX_CONNECTIONS + 3)
        ]
        assert held[-1].recv(1) == b""  # beyond the bound: closed at once
        for conn in held:
            conn.close()
        assert receiver.wait_for(lambda reqs: len(reqs) >= 1, 10)
        assert wait_until(lambda: "no free slot" in agent.log_since(), 5)
        assert agent.terminate() == 0
    entries = json_lines(agent.log_since())
    messages = [entry["message"] for entry in entries]
    assert "Cannot read a log file; trying again later" in messages
    assert messages[-1] == "Stopped; undelivered events are kept for the next start"
    assert not [e for e in entries if e["level"] in ("error", "critical")]
