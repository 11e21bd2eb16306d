"""SIGTERM to the real `tailhook run` while its webhook fails: the batch in backoff stays
in backoff, at most one more attempt is made, and the agent exits 0 within
``shutdown_timeout`` (CONTRACT §8)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.agent_support import hit_line
from tests.support.agent_process import AgentProcess
from tests.support.netfaults import RawConnection, RawServer
from tests.support.receiver import Receiver

SHUTDOWN_TIMEOUT = 3.0

CONFIG = """\
state_dir: {state}
metrics: {{listen: "127.0.0.1:0"}}
log: {{level: info, format: json}}
sources: [{{name: waf, type: file, paths: [{log}]}}]
webhooks:
  - name: soc
    url: "{url}"
    events: [hit]
    batch: {{max_wait: 10ms}}
    retry: {{initial_backoff: 50ms, max_backoff: 200ms}}
shutdown_timeout: {shutdown}s
"""


def close_at_once(conn: RawConnection) -> None:
    """Accept, then close without answering: a `connection` failure."""
    conn.read_request()


@contextmanager
def failing_webhook(kind: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """A webhook URL that always fails, and a count of the attempts it has seen."""
    if kind == "503":
        with Receiver(503) as receiver:
            yield receiver.url, lambda: len(receiver.requests)
    else:
        with RawServer(close_at_once) as server:
            yield server.url, lambda: server.accepted


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["503", "closed"])
def test_sigterm_with_a_failing_webhook_makes_at_most_one_more_attempt(
    tmp_path: Path, kind: str
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    config = tmp_path / "config.yaml"
    with failing_webhook(kind) as (url, attempts):
        config.write_text(
            CONFIG.format(
                state=tmp_path / "state",
                log=json.dumps(str(log)),
                url=url,
                shutdown=SHUTDOWN_TIMEOUT,
            )
        )
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            deadline = time.monotonic() + 10
            while attempts() < 3:  # retrying, in backoff between attempts
                assert time.monotonic() < deadline, "the webhook was not retried"
                time.sleep(0.02)
            before = attempts()
            stopping = time.monotonic()
            assert agent.terminate(timeout=SHUTDOWN_TIMEOUT + 10) == 0
            took = time.monotonic() - stopping
        during_shutdown = attempts() - before
        # The attempt in flight at SIGTERM, if any, and at most one after the stop; with
        # a backoff of 50-200 ms, a loop retrying until the deadline would make ~20.
        assert during_shutdown <= 2, during_shutdown
        assert took < SHUTDOWN_TIMEOUT + 2.0, took
        stopped = [
            json.loads(line)
            for line in agent.log_since().splitlines()
            if line.startswith("{") and "Stopped;" in line
        ]
        assert stopped and stopped[0]["backlog"] == {"soc": 3}  # kept for the next start
