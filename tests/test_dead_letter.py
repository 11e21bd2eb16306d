"""Dead letters through the real process: written, listed, replayed to one webhook."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.receiver import Receiver
from tests.test_end_to_end import tailhook, tailhook_run

pytestmark = pytest.mark.slow

CONFIG = """\
state_dir: {state}
metrics: {{listen: "127.0.0.1:0"}}
sources: [{{name: waf, type: file, paths: ["{log}"]}}]
webhooks:
  - {{name: soc, url: "{soc}", events: [hit], batch: {{max_wait: 50ms}}}}
  - {{name: archive, url: "{archive}", events: [hit], batch: {{max_wait: 50ms}}}}
shutdown_timeout: 2s
"""


def test_rejected_batches_are_listed_and_replayed_to_their_webhook_alone(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    config = tmp_path / "config.yaml"
    with Receiver(400) as soc:
        config.write_text(
            CONFIG.format(state=tmp_path / "state", log=log, soc=soc.url, archive=receiver.url)
        )
        with tailhook_run(config, {}) as (process, _):
            assert soc.wait_for(1, timeout=10)
            assert receiver.wait_for(1, timeout=10)
            letters = tmp_path / "state" / "dead-letter" / "soc.jsonl"
            assert wait_until(letters.exists, timeout=5)

            listed = tailhook("dead-letter", "list", "-c", str(config), "soc")
            assert listed.returncode == 0
            assert "rejected" in listed.stdout and "events=3" in listed.stdout
            [entry] = [json.loads(line) for line in letters.read_text().splitlines()]
            assert entry["status"] == 400 and entry["reason"] == "rejected"
            assert entry["webhook_id"] == soc.requests[0].headers["webhook-id"]

            soc.answer_with(200)
            replayed = tailhook("dead-letter", "replay", "-c", str(config), "soc")
            assert replayed.returncode == 0, replayed.stderr
            assert "queued 3 events from 1 batches" in replayed.stdout
            assert soc.wait_for(2, timeout=10)  # the running agent picks them up
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        assert received_ids([soc.requests[-1].json()]) == ["hit-0", "hit-1", "hit-2"]
        assert soc.requests[-1].headers["webhook-id"] != entry["webhook_id"]
    assert received_ids(receiver.bodies_json()) == ["hit-0", "hit-1", "hit-2"]  # not again
    assert not letters.exists()
    assert len(list(letters.parent.glob("soc.replayed-*.jsonl"))) == 1


def test_replay_of_an_unknown_webhook_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\nwebhooks: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "dead-letter", "replay", "-c", str(config), "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no webhook is named 'nope'" in result.stderr
