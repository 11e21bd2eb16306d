"""Dead letters through the real process: written, listed, replayed to one webhook, never
behind a running agent's back nor at another webhook's expense."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import agent.replay as replay_module
from agent.errors import StateDirInUse, StateError
from agent.replay import replay, replay_dead_letters
from agent.sinks.deadletter import dead_letter_path, write_dead_letter
from agent.spool import NewSegment, Spool
from agent.statedir import check_state_dir
from agent.telemetry import Metrics
from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import AgentProcess
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


TWO_WEBHOOKS = """\
state_dir: {state}
metrics: {{listen: "127.0.0.1:0"}}
sources: [{{name: waf, type: file, paths: ["{log}"]}}]
webhooks:
  - {{name: soc, url: "{soc}", events: [hit], batch: {{max_wait: 50ms}}}}
  - name: archive
    url: "{archive}"
    events: [hit]
    batch: {{max_wait: 50ms}}
    retry: {{initial_backoff: 50ms, max_backoff: 200ms}}
shutdown_timeout: 1s
"""
# The same state_dir with only "soc": the file an operator edited but did not reload yet.
SOC_ONLY = """\
state_dir: {state}
webhooks: [{{name: soc, url: "{soc}", events: [hit]}}]
"""


def write_configs(tmp_path: Path, soc: Receiver, archive: Receiver) -> tuple[Path, Path, Path]:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    state = tmp_path / "state"
    full, narrow = tmp_path / "full.yaml", tmp_path / "narrow.yaml"
    full.write_text(TWO_WEBHOOKS.format(state=state, log=log, soc=soc.url, archive=archive.url))
    narrow.write_text(SOC_ONLY.format(state=state, soc=soc.url))
    return full, narrow, state / "dead-letter" / "soc.jsonl"


def ids_since(receiver: Receiver, first: int) -> list[str]:
    """The hit ids of the requests from the ``first``-th on (those answered since)."""
    return received_ids([request.json() for request in receiver.requests[first:]])


def test_replay_through_a_running_agent_leaves_another_webhooks_backlog_alone(
    tmp_path: Path,
) -> None:
    with Receiver(400) as soc, Receiver(503) as archive:
        full, narrow, letters = write_configs(tmp_path, soc, archive)
        with AgentProcess(full, tmp_path / "agent.log") as agent:
            assert wait_until(letters.exists, timeout=10)
            assert archive.wait_for(2, timeout=10)  # its backlog waits on its receiver
            soc.answer_with(200)
            rejected = len(soc.requests)
            replayed = tailhook("dead-letter", "replay", "-c", str(narrow), "soc")
            assert replayed.returncode == 0, replayed.stderr
            assert "soc: queued 3 events from 1 batches again" in replayed.stdout
            assert replayed.stderr == ""
            # The running agent sent them; the archive's backlog is still all there.
            assert soc.wait_for(lambda _: len(ids_since(soc, rejected)) >= 3, timeout=10)
            assert agent.metric("tailhook_webhook_backlog_events", webhook="archive") == 3
            assert agent.terminate() == 0
        assert ids_since(soc, rejected) == ["hit-0", "hit-1", "hit-2"]
        # ... and still there for the next start, which delivers it once it can.
        archive.answer_with(200)
        refused = len(archive.requests)
        with AgentProcess(full, tmp_path / "agent.log") as agent:
            assert archive.wait_for(lambda _: len(ids_since(archive, refused)) >= 3, 10)
            assert agent.terminate() == 0
        assert ids_since(archive, refused) == ["hit-0", "hit-1", "hit-2"]
        assert ids_since(soc, rejected) == ["hit-0", "hit-1", "hit-2"]  # not again
    assert list((tmp_path / "state" / "requests").iterdir()) == []


def test_replay_without_an_agent_keeps_another_webhooks_backlog_for_its_next_start(
    tmp_path: Path,
) -> None:
    with Receiver(400) as soc, Receiver(503) as archive:
        full, narrow, letters = write_configs(tmp_path, soc, archive)
        with AgentProcess(full, tmp_path / "agent.log") as agent:
            assert wait_until(letters.exists, timeout=10)
            assert archive.wait_for(1, timeout=10)
            assert agent.terminate() == 0
        replayed = tailhook("dead-letter", "replay", "-c", str(narrow), "soc")
        assert replayed.returncode == 0, replayed.stderr
        assert "soc: queued 3 events from 1 batches again" in replayed.stdout
        soc.answer_with(200)
        archive.answer_with(200)
        rejected, refused = len(soc.requests), len(archive.requests)
        with AgentProcess(full, tmp_path / "agent.log") as agent:
            assert soc.wait_for(lambda _: len(ids_since(soc, rejected)) >= 3, timeout=10)
            assert archive.wait_for(lambda _: len(ids_since(archive, refused)) >= 3, 10)
            assert agent.terminate() == 0
    assert ids_since(soc, rejected) == ["hit-0", "hit-1", "hit-2"]
    assert ids_since(archive, refused) == ["hit-0", "hit-1", "hit-2"]


def dead_letter_entry(*ids: int, object_type: str = "hit") -> bytes:
    events = [{"object_type": object_type, "id": [f"hit-{n}"], "n": n} for n in ids]
    entry = {
        "time": "2024-01-01T00:00:00Z",
        "webhook": "soc",
        "webhook_id": "msg_0",
        "reason": "rejected",
        "status": 400,
        "response": "",
        "events": events,
    }
    return json.dumps(entry).encode()


def test_torn_and_invalid_lines_are_reported_and_skipped_by_list_and_replay(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.touch()
    state = tmp_path / "state"
    letters = state / "dead-letter" / "soc.jsonl"
    letters.parent.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    letters.write_bytes(
        dead_letter_entry(1, 2)
        + b"\n{not json\n"
        + b"[1, 2]\n"
        + dead_letter_entry(3)[:-1]
        + b', "extra": [{"object_type": "nope"}]}\n'
        + dead_letter_entry(4)[:40]  # torn: the writer was killed mid-line
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {state}\nmetrics: {{listen: 127.0.0.1:0}}\n"
        f"sources: [{{name: waf, type: file, paths: [{log}]}}]\n"
        f"webhooks: [{{name: soc, url: '{receiver.url}', events: [hit],"
        " batch: {max_wait: 50ms}}]\n"
    )
    listed = tailhook("dead-letter", "list", "-c", str(config), "soc")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("rejected") == 2 and "events=2" in listed.stdout
    assert "Traceback" not in listed.stderr
    assert f"{letters}: line 2: not JSON; skipped" in listed.stderr
    assert f"{letters}: line 3: not a dead-letter entry (no events list); skipped" in listed.stderr
    assert f"{letters}: line 5: torn; skipped" in listed.stderr

    replayed = tailhook("dead-letter", "replay", "-c", str(config), "soc")
    assert replayed.returncode == 0, replayed.stderr
    assert "soc: queued 3 events from 2 batches again" in replayed.stdout
    assert f"{letters}: line 5: torn; skipped" in replayed.stderr
    assert "Traceback" not in replayed.stderr
    assert not letters.exists()
    [kept] = letters.parent.glob("soc.replayed-*.jsonl")
    assert kept.read_bytes().endswith(dead_letter_entry(4)[:40])  # kept whole, torn line too
    # A webhook the spool never saw gets a cursor at the replay: its first start sends it.
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert receiver.wait_for(lambda r: len(received_ids(receiver.bodies_json())) >= 3, 10)
        assert agent.terminate() == 0
    assert received_ids(receiver.bodies_json()) == ["hit-1", "hit-2", "hit-3"]


@pytest.mark.parametrize("command", ["list", "replay"])
@pytest.mark.parametrize("name", ["nope", "../../etc/passwd"])
def test_the_webhook_argument_must_name_a_configured_webhook(
    tmp_path: Path, command: str, name: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}/state\nwebhooks: []\n")
    result = tailhook("dead-letter", command, "-c", str(config), name)
    assert result.returncode == 2
    assert f"webhooks: no webhook is named {name!r}" in result.stderr


HOLDER = """\
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextmanager
def lock_holder(state: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``state``'s lock for ``seconds`` that answers nothing."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state / "lock"), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


def replay_setup(tmp_path: Path) -> tuple[Path, Path, Callable[[], Spool]]:
    state = tmp_path / "state"
    check_state_dir(state)
    write_dead_letter(state, "soc", "msg_1", "rejected", 400, b"", b'[{"object_type":"hit"}]')

    def open_spool() -> Spool:
        return Spool(state / "spool.db", Metrics(CollectorRegistry()))

    return state, dead_letter_path(state, "soc"), open_spool


def test_a_replay_beside_a_holder_that_never_answers_fails_and_withdraws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, letters, open_spool = replay_setup(tmp_path)
    monkeypatch.setattr(replay_module, "ANSWER_WAIT", 1.0)
    with lock_holder(state, 60) as holder:
        with pytest.raises(StateDirInUse) as refused:
            replay(state, "soc", open_spool)
        assert str(refused.value) == f"state_dir {state} is in use by process {holder.pid}"
    assert list((state / "requests").iterdir()) == []  # the request was withdrawn
    assert letters.exists()  # and nothing was done


def test_a_replay_waits_for_a_holder_that_goes_away(tmp_path: Path) -> None:
    state, letters, open_spool = replay_setup(tmp_path)
    with lock_holder(state, 1.0):
        outcome = replay(state, "soc", open_spool)
    assert (outcome.events, outcome.batches) == (1, 1)
    assert not letters.exists()
    assert list((state / "requests").iterdir()) == []


def test_a_replay_the_spool_has_no_room_for_leaves_the_file_where_it_was(
    tmp_path: Path,
) -> None:
    state, letters, _ = replay_setup(tmp_path)
    before = letters.read_bytes()
    spool = Spool(state / "spool.db", Metrics(CollectorRegistry()), max_bytes=200)
    try:
        spool.configure_webhooks({"archive": frozenset({"hit"})})
        padded = b'{"object_type":"hit","pad":"' + b"x" * 190 + b'"}'
        spool.append("waf", NewSegment.of([("hit", padded)]))
        with pytest.raises(StateError, match="no room"):
            replay_dead_letters(state, spool, "soc")
        assert spool.backlog("archive") == 1
    finally:
        spool.close()
    assert letters.read_bytes() == before
