"""The state directory in a hostile place (CONTRACT §8): one agent per ``state_dir``, a
``state_dir`` others could tamper with refused, no file in it followed through a link."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.errors import StateDirInUse, StateError
from agent.statedir import StateDirLock, check_state_dir, open_file
from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.agent_process import REPO, AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def tailhook_run_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``tailhook run`` expected to exit at once (refused)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def log_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line as a JSON log entry (fails on anything else)."""
    return [json.loads(line) for line in stderr.splitlines()]


def write_config(tmp_path: Path, state: Path, url: str = "http://127.0.0.1:9/") -> Path:
    log = tmp_path / "detections.log"
    log.touch()
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(state, url, [str(log)]))
    return config


# -- one agent per state_dir ------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_same_state_dir_exits_1_naming_the_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, state)
    with AgentProcess(config, tmp_path / "first.log") as first:
        second = tailhook_run_once(config)
        assert second.returncode == 1, second.stderr
        [entry] = log_lines(second.stderr)
        assert entry["level"] == "error"
        assert entry["message"] == f"state_dir {state} is in use by process {first.pid}"
        assert first.process is not None and first.process.poll() is None  # untouched
        assert first.terminate() == 0
    with AgentProcess(config, tmp_path / "again.log") as again:  # free again
        assert again.terminate() == 0


def test_the_lock_names_its_holder_and_frees_on_release(tmp_path: Path) -> None:
    state = tmp_path / "state"
    check_state_dir(state)
    lock = StateDirLock.acquire(state)
    assert (state / "lock").read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600
    in_use = f"state_dir {state} is in use by process {os.getpid()}"
    with pytest.raises(StateDirInUse, match=re.escape(in_use)):
        StateDirLock.acquire(state)  # a second open file description: refused like a process
    lock.release()
    StateDirLock.acquire(state).release()


def test_an_agent_in_process_holds_the_lock_while_it_runs(
    tmp_path: Path, receiver: Receiver
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(hit_line(1) + b"\n")
    config = file_config(tmp_path, receiver.url, (str(log),))
    with running_agent(config):
        with pytest.raises(StateDirInUse):
            StateDirLock.acquire(config.state_dir)
        assert receiver.wait_for(1, timeout=10)
    StateDirLock.acquire(config.state_dir).release()
    assert received_ids(receiver.bodies_json()) == ["hit-1"]


# -- a state_dir others could tamper with ---------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777], ids=["0770", "0707", "0777"])
def test_a_state_dir_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    result = tailhook_run_once(write_config(tmp_path, state))
    assert result.returncode == 2, result.stderr
    [entry] = log_lines(result.stderr)
    assert entry["message"] == (
        f"state_dir: {state} is writable by group or others (mode {mode:04o}); chmod go-w it"
    )
    assert not (state / "spool.db").exists()  # refused before anything was written


def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    result = tailhook_run_once(write_config(tmp_path, state))
    assert result.returncode == 2, result.stderr
    [entry] = log_lines(result.stderr)
    assert entry["message"] == (
        f"state_dir: {state} belongs to user 65534, not to this user ({os.geteuid()})"
    )


@pytest.mark.parametrize("name", ["spool.db", "spool.db-wal", "spool.db-shm"])
def test_a_link_where_a_spool_file_goes_is_refused(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep me")
    (state / name).symlink_to(elsewhere)
    result = tailhook_run_once(write_config(tmp_path, state))
    assert result.returncode == 2, result.stderr
    [entry] = log_lines(result.stderr)
    assert entry["message"] == (f"state_dir: {state / name} is a symbolic link, not a regular file")
    assert elsewhere.read_bytes() == b"keep me"


def test_a_fresh_state_dir_and_its_files_are_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    old = os.umask(0o022)
    try:
        check_state_dir(state)
        os.close(open_file(state, "dead-letter", "x.jsonl", flags=APPEND))
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "spool.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "dead-letter").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "dead-letter" / "x.jsonl").stat().st_mode) == 0o600


# -- files in it are never followed through a link ------------------------------------


def test_open_file_refuses_links_fifos_and_hard_links_below_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    check_state_dir(state)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "soc.jsonl"
    target.write_bytes(b"")
    (state / "dead-letter").symlink_to(outside)  # a link in the middle
    with pytest.raises(StateError, match="dead-letter is a symbolic link; refusing to follow"):
        open_file(state, "dead-letter", "soc.jsonl", flags=APPEND)
    (state / "dead-letter").unlink()
    (state / "dead-letter").mkdir(mode=0o700)
    (state / "dead-letter" / "soc.jsonl").symlink_to(target)  # a link at the end
    with pytest.raises(StateError, match=r"soc\.jsonl is a symbolic link; refusing to follow"):
        open_file(state, "dead-letter", "soc.jsonl", flags=APPEND)
    (state / "dead-letter" / "soc.jsonl").unlink()
    os.mkfifo(state / "dead-letter" / "soc.jsonl")  # would block an open for reading
    with pytest.raises(StateError, match="is a FIFO, not a regular file"):
        open_file(state, "dead-letter", "soc.jsonl", flags=os.O_RDONLY)
    (state / "dead-letter" / "soc.jsonl").unlink()
    os.link(target, state / "dead-letter" / "soc.jsonl")
    with pytest.raises(StateError, match="has 2 hard links"):
        open_file(state, "dead-letter", "soc.jsonl", flags=APPEND)
    assert target.read_bytes() == b""


@pytest.mark.slow
def test_a_link_planted_at_a_dead_letter_file_is_not_written_through(tmp_path: Path) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"".join(hit_line(n) + b"\n" for n in range(3)))
    state = tmp_path / "state"
    target = tmp_path / "precious"
    target.write_bytes(b"precious\n")
    (state / "dead-letter").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    letters = state / "dead-letter" / "soc.jsonl"
    letters.symlink_to(target)
    with Receiver(400) as soc:
        config = tmp_path / "config.yaml"
        config.write_text(file_source_yaml(state, soc.url, [str(log)]))
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            assert soc.wait_for(1, timeout=10)

            def refusal_logged() -> bool:
                return f"{letters} is a symbolic link; refusing to follow it" in agent.log_since()

            assert wait_until(refusal_logged, timeout=10)
            assert target.read_bytes() == b"precious\n"
            assert letters.is_symlink()
            # Nothing is lost: once the link is gone the batch is dead-lettered for real.
            letters.unlink()
            assert wait_until(letters.exists, timeout=15)
            assert agent.terminate() == 0
    [entry] = [json.loads(line) for line in letters.read_text().splitlines()]
    assert received_ids([entry["events"]]) == ["hit-0", "hit-1", "hit-2"]
    assert target.read_bytes() == b"precious\n"
    entries = [json.loads(line) for line in agent.log_since().splitlines() if line[:1] == "{"]
    assert any(e["level"] == "error" and "symbolic link" in str(e.get("error")) for e in entries)


def test_a_link_planted_at_a_rejected_lines_file_is_not_written_through(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "detections.log"
    log.write_bytes(b"{not json\n" + hit_line(1) + b"\n")
    config = file_config(tmp_path, receiver.url, (str(log),))
    target = tmp_path / "precious"
    target.write_bytes(b"precious\n")
    (config.state_dir / "rejected").mkdir(parents=True, mode=0o700)
    config.state_dir.chmod(0o700)
    (config.state_dir / "rejected" / "waf.jsonl").symlink_to(target)
    with caplog.at_level(logging.ERROR, logger="agent"), running_agent(config):
        assert receiver.wait_for(1, timeout=10)  # the valid line is still delivered
        assert wait_until(lambda: "Refusing to write the rejected-lines file" in caplog.text, 5)
    assert target.read_bytes() == b"precious\n"
    assert received_ids(receiver.bodies_json()) == ["hit-1"]
    [refusal] = [r for r in caplog.records if "rejected-lines" in r.getMessage()]
    assert "waf.jsonl is a symbolic link; refusing to follow it" in refusal.fields["error"]


# -- the socket directory ------------------------------------------------------------------


def test_an_existing_socket_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="th-", dir="/tmp"))  # AF_UNIX paths: 107 bytes
    try:
        run_dir.chmod(0o777)
        path = run_dir / "detections.sock"
        config = tmp_path / "config.yaml"
        config.write_text(
            f"state_dir: {tmp_path}/state\nmetrics: {{listen: 127.0.0.1:0}}\nsources:\n"
            f"  - name: s\n    type: unix_socket\n    path: {path}\nwebhooks: []\n"
        )
        result = tailhook_run_once(config)
        assert result.returncode == 2, result.stderr
        messages = [entry["message"] for entry in log_lines(result.stderr)]
        assert (
            f"sources[0].path: {run_dir} is writable by others (mode 0777); chmod o-w it"
            in messages
        )
        assert not path.exists()
    finally:
        os.rmdir(run_dir)


@pytest.mark.slow
def test_a_killed_agent_leaves_the_state_dir_free(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, state)
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        agent.kill()  # SIGKILL: the kernel lets go of the lock
    StateDirLock.acquire(state).release()
