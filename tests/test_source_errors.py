"""Files a source cannot read: not permitted, vanished (a dangling symlink), an I/O error
(a symlink loop). Each is warned about with backoff (1 s, 2 s, 4 s, ... not every
second), counted in ``tailhook_source_errors_total{reason}``, and absent from
``tailhook_source_files``; once it can be read it is, from where it was.

Permission: the tests run as root, who reads any file, so the agent runs under
``setpriv`` without the capabilities that let root ignore file modes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

WARNING = "Cannot read a log file; trying again later"
#: Without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH root obeys file modes like anyone.
NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def warnings_about(records: list[logging.LogRecord], path: Path) -> list[dict[str, Any]]:
    found = []
    for record in records:
        values = getattr(record, "fields", {})
        if record.getMessage() == WARNING and values.get("path") == str(path):
            found.append(values)
    return found


@pytest.mark.slow
def test_unusable_files_are_warned_about_with_backoff_and_counted(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_bytes(hit_line(1) + b"\n")
    gone, loop = logs / "gone.log", logs / "loop.log"
    os.symlink(logs / "nowhere", gone)  # vanished: ENOENT
    os.symlink(loop, loop)  # ELOOP: an I/O error of another kind
    caplog.set_level(logging.INFO, logger="agent")
    config = file_config(tmp_path, receiver.url, (f"{logs}/*.log",))
    with running_agent(config) as agent:

        def sample(name: str, **labels: str) -> float | None:
            return agent.registry.get_sample_value(name, {"source": "waf", **labels})

        assert sample("tailhook_source_errors_total", reason="permission") == 0
        assert receiver.wait_for(lambda reqs: len(reqs) >= 1, 5)
        assert sample("tailhook_source_files") == 1
        # 7.5 s: tried at 0, ~1, ~3, ~7 s with backoff; every second (8 times) without.
        assert not wait_until(lambda: len(warnings_about(caplog.records, gone)) > 4, 7.5)
        counted = {
            reason: sample("tailhook_source_errors_total", reason=reason)
            for reason in ("not_found", "io", "permission")
        }
        seen = {path: warnings_about(caplog.records, path) for path in (gone, loop)}
        assert sample("tailhook_source_files") == 1
        for path, reason in ((gone, "not_found"), (loop, "io")):
            assert 3 <= len(seen[path]) <= 4, seen[path]
            assert [w["reason"] for w in seen[path]] == [reason] * len(seen[path])
            assert [w["retry_in"] for w in seen[path]][:3] == [1.0, 2.0, 4.0]
            assert counted[reason] == len(seen[path])
        assert counted["permission"] == 0

        # Another file at the failing path is tried at once, not after the backoff (8 s).
        (tmp_path / "new").write_bytes(hit_line(2) + b"\n")
        os.replace(tmp_path / "new", gone)  # the path always matches: no gap
        assert receiver.wait_for(lambda reqs: len(received_ids([r.json() for r in reqs])) >= 2, 3)
        assert wait_until(lambda: sample("tailhook_source_files") == 2, 3)
        assert "A log file can be read now" in caplog.text
    assert sorted(received_ids(receiver.bodies_json())) == ["hit-1", "hit-2"]


def root_without_dac_override() -> None:
    """Skip unless this test can make a file the agent may not read."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs this test as root with setpriv (util-linux) installed")
        pytest.skip("needs root and setpriv to run the agent without CAP_DAC_OVERRIDE")


def log_lines(agent: AgentProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in agent.log_since().splitlines()]


@pytest.mark.slow
def test_a_file_the_agent_may_not_read_is_counted_then_read_from_where_it_was(
    tmp_path: Path, receiver: Receiver
) -> None:
    root_without_dac_override()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_bytes(hit_line(1) + b"\n")
    secret = logs / "secret.log"
    secret.write_bytes(hit_line(2) + b"\n")
    secret.chmod(0o000)
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(tmp_path / "state", receiver.url, [f"{logs}/*.log"]))
    stderr = tmp_path / "stderr.log"

    def ids() -> list[str]:
        return received_ids(receiver.bodies_json())

    with AgentProcess(config, stderr, command_prefix=NO_DAC) as agent:
        assert receiver.wait_for(lambda reqs: len(reqs) >= 1, 10)
        errors = "tailhook_source_errors_total"
        assert wait_until(
            lambda: (agent.metric(errors, source="waf", reason="permission") or 0) >= 2, 5
        )
        assert agent.metric("tailhook_source_files", source="waf") == 1
        assert ids() == ["hit-1"]
        secret.chmod(0o644)  # next try within 4 s
        assert wait_until(lambda: ids() == ["hit-1", "hit-2"], 8)
        assert agent.metric("tailhook_source_files", source="waf") == 2
        assert agent.terminate() == 0

    # Unreadable at the next start: its checkpoint is kept, not forgotten.
    secret.chmod(0o000)
    with secret.open("ab") as out:
        out.write(hit_line(3) + b"\n")
    with AgentProcess(config, stderr, command_prefix=NO_DAC) as agent:
        assert wait_until(
            lambda: (agent.metric(errors, source="waf", reason="permission") or 0) >= 1, 5
        )
        secret.chmod(0o644)
        assert wait_until(lambda: ids() == ["hit-1", "hit-2", "hit-3"], 8)
        assert agent.terminate() == 0
    entries = log_lines(agent)  # every line of stderr is a JSON log line
    warned = [e for e in entries if e["message"] == WARNING]
    assert [e["reason"] for e in warned] == ["permission"] * len(warned)
    assert {e["path"] for e in warned} == {str(secret)}
    assert ids() == ["hit-1", "hit-2", "hit-3"]  # hit-2 once: read from its checkpoint
