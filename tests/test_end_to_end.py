"""The real ``tailhook`` process: run, signals, metrics and health, the offline commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from agent import __version__
from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.receiver import Receiver, RecordedRequest

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {state}
metrics:
  listen: 127.0.0.1:0
log:
  level: info
  format: json
sources:
  - name: waf
    type: file
    paths: ["{logs}/detections*.log"]
webhooks:
  - name: soc
    url: {url}
    method: PUT
    headers:
      Authorization: "Bearer ${{SOC_TOKEN}}"
    events: [hit, scope]
    batch: {{max_wait: 50ms}}
shutdown_timeout: 5s
"""


def tailhook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def tailhook_run(config: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``tailhook run`` and yield it with its metrics base URL, read from its log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert process.stderr is not None
        base = ""
        for line in process.stderr:
            entry = json.loads(line)
            if entry["message"] == "tailhook is running":
                base = entry["metrics"].removesuffix("/metrics")
                break
        assert base, "tailhook did not start"
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def test_run_delivers_serves_metrics_and_stops_cleanly_on_sigterm(
    tmp_path: Path, receiver: Receiver
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state", logs=logs, url=receiver.url))
    secret = "tok-" + "9" * 20
    (logs / "detections.log").write_bytes(hit_line(1) + b"\n")
    with tailhook_run(config, {"SOC_TOKEN": secret}) as (process, base):
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        with (logs / "detections.log").open("ab") as out:
            out.write(hit_line(2) + b"\n")
            out.write(b'{"event":"system","time":1,"action":"nope"}\n')
        assert receiver.wait_for(lambda r: len(received_ids([x.json() for x in r])) >= 2, 10)
        # The receiver wakes the test before it answers; the counter moves on the answer.
        code_200 = 'tailhook_webhook_requests_total{code="200",webhook="soc"}'
        assert wait_until(lambda: code_200 in requests.get(base + "/metrics", timeout=5).text, 5)
        metrics = requests.get(base + "/metrics", timeout=5).text
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    request = receiver.requests[0]
    assert request.method == "PUT"
    assert request.headers["Authorization"] == f"Bearer {secret}"
    assert received_ids(receiver.bodies_json()) == ["hit-1", "hit-2"]
    assert 'tailhook_events_total{event_type="hit",outcome="accepted",source="waf"} 2.0' in metrics
    assert 'tailhook_source_lines_total{source="waf"} 3.0' in metrics
    assert 'tailhook_webhook_requests_total{code="200",webhook="soc"}' in metrics
    assert f'tailhook_build_info{{version="{__version__}"}} 1.0' in metrics
    for family in (
        "tailhook_webhook_request_duration_seconds",
        "tailhook_spool_bytes",
        "tailhook_webhook_backlog_events",
        "tailhook_file_lag_bytes",
    ):
        assert f"# HELP {family}" in metrics
    assert secret not in metrics


def test_check_config_prints_every_problem_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "webhooks:\n"
        "  - name: a\n    url: https://siem.example.com/x\n    events: [hit]\n"
        "  - name: b\n    url: ftp://nope\n    evnts: [hit]\n    events: [hit]\n"
        "    request_timeout: 15 parsecs\n"
    )
    result = tailhook("check-config", "-c", str(config))
    assert result.returncode == 2
    assert "webhooks[1].evnts: unknown key" in result.stderr
    assert "webhooks[1].url:" in result.stderr
    assert "webhooks[1].request_timeout:" in result.stderr


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "webhooks:\n  - name: a\n    url: https://x.example\n    events: [hit]\n"
        "    headers: {Authorization: '${MISSING_TOKEN}'}\n"
    )
    result = tailhook("run", "-c", str(config))
    assert result.returncode == 2
    assert "MISSING_TOKEN" in result.stderr


def test_validate_reports_each_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    good.write_bytes(hit_line(1) + b"\n" + hit_line(2) + b"\n")
    bad = tmp_path / "bad.log"
    bad.write_bytes(hit_line(1) + b"\n{oops\n")
    ok = tailhook("validate", str(good))
    assert ok.returncode == 0, ok.stdout
    failed = tailhook("validate", str(good), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:2: invalid_json" in failed.stdout


def test_version() -> None:
    result = tailhook("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tailhook {__version__}"


def test_demo_runs_with_no_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receiver got 4 notifications" in result.stdout
    assert "/metrics" in result.stdout
    assert "invalid line was rejected" in result.stdout


def test_test_webhook_sends_one_of_each_subscribed_type(tmp_path: Path, receiver: Receiver) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nwebhooks:\n  - name: soc\n    url: {receiver.url}\n"
        "    events: [hit, system]\n"
    )
    result = tailhook("test-webhook", "-c", str(config), "soc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200" in result.stdout
    [body] = receiver.bodies_json()
    assert [obj["object_type"] for obj in body] == ["hit", "system"]
    assert body[1]["summary"].startswith("[Test message] ")


def test_sigkill_then_restart_resends_the_same_batch(tmp_path: Path, receiver: Receiver) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state", logs=logs, url=receiver.url))
    receiver.answer_with(503)
    (logs / "detections.log").write_bytes(b"".join(hit_line(n) + b"\n" for n in range(20)))
    with tailhook_run(config, {"SOC_TOKEN": "x"}) as (process, _):
        assert receiver.wait_for(1, timeout=10)
        process.kill()
        process.wait(10)
    refused = receiver.requests[0]
    receiver.answer_with(200)

    def all_delivered(requests: list[RecordedRequest]) -> bool:
        return len(set(received_ids([r.json() for r in requests]))) >= 20

    with tailhook_run(config, {"SOC_TOKEN": "x"}) as (process, _):
        assert receiver.wait_for(all_delivered, 15)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    resent = [
        r for r in receiver.requests[1:] if r.headers["webhook-id"] == refused.headers["webhook-id"]
    ]
    assert resent and all(r.body == refused.body for r in resent)
    assert set(received_ids(receiver.bodies_json())) == {f"hit-{n}" for n in range(20)}


SOCKET_CONFIG = """\
state_dir: {state}
metrics:
  listen: 127.0.0.1:0
sources:
  - name: node
    type: unix_socket
    path: {path}
    socket_mode: "0660"
webhooks:
  - name: soc
    url: {url}
    events: [hit]
    batch: {{max_wait: 50ms}}
shutdown_timeout: 5s
"""


def test_run_with_a_unix_socket_source_delivers_what_clients_write(
    tmp_path: Path, receiver: Receiver
) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="th-", dir="/tmp"))  # AF_UNIX paths: 107 bytes
    path = run_dir / "run" / "detections.sock"
    config = tmp_path / "config.yaml"
    config.write_text(SOCKET_CONFIG.format(state=tmp_path / "state", path=path, url=receiver.url))
    try:
        with tailhook_run(config, {}) as (process, base):
            assert requests.get(base + "/readyz", timeout=5).status_code == 200
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            for n in range(3):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(str(path))
                    line = hit_line(n) + b"\n"
                    client.sendall(line[:30])
                    client.sendall(line[30:])
            assert receiver.wait_for(lambda r: len(received_ids([x.json() for x in r])) >= 3, 10)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        assert sorted(received_ids(receiver.bodies_json())) == ["hit-0", "hit-1", "hit-2"]
        assert not path.exists()  # removed on a clean stop
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_run_refuses_to_replace_a_regular_file_at_the_socket_path(tmp_path: Path) -> None:
    path = tmp_path / "detections.sock"
    path.write_text("not a socket\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path}/state\nmetrics: {{listen: 127.0.0.1:0}}\nsources:\n"
        f"  - name: s\n    type: unix_socket\n    path: {path}\nwebhooks: []\n"
    )
    assert tailhook("check-config", "-c", str(config)).returncode == 0  # it cannot know
    result = tailhook("run", "-c", str(config))
    assert result.returncode == 2
    assert f"sources[0].path: {path} is a regular file; refusing to replace it" in result.stderr
    assert path.read_text() == "not a socket\n"
