"""tailhook never tails its own output: a file source glob that can match a file inside
``state_dir`` is a config error, and a match that leads there anyway (a symlink) is
skipped at run time with one warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.config.rules import glob_reaches_into
from agent.errors import ConfigError
from tests.agent_support import file_config, hit_line, received_ids, running_agent, wait_until
from tests.support.agent_process import REPO
from tests.support.receiver import Receiver


def config_text(state_dir: str | None, *paths: str) -> str:
    state = f"state_dir: {state_dir}\n" if state_dir is not None else ""
    listed = ", ".join(f'"{p}"' for p in paths)
    return state + f"sources:\n  - {{name: waf, type: file, paths: [{listed}]}}\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    return [str(problem) for problem in caught.value.problems]


def message(index: int, state_dir: str) -> str:
    return (
        f"sources[0].paths[{index}]: can match files inside state_dir {state_dir}; tailhook "
        "never reads its own files (rejected lines, dead letters, the spool)"
    )


@pytest.mark.parametrize(
    "pattern",
    [
        "/srv/th/rejected/waf.jsonl",
        "/srv/th/rejected/*.jsonl",
        "/srv/th/rejected/*.jsonl.*",
        "/srv/th/dead-letter/*",
        "/srv/th/*",
        "/srv/th/spool.db",
        "/srv/*/*",
        "/srv/*/rejected/*",
        "/*/th/*/*",
        "/srv/t?/*",
        "/srv/[st]h/*",
        "/srv/th/../th/spool.db",
        "/srv/**/*",
    ],
)
def test_a_glob_that_can_reach_into_state_dir_is_refused(pattern: str) -> None:
    text = config_text("/srv/th", "/var/log/waf/*.log", pattern)
    assert problems(text) == [message(1, "/srv/th")]


@pytest.mark.parametrize(
    "pattern",
    [
        "/srv/th",  # state_dir itself: a directory, never tailed
        "/srv/*",  # matches state_dir, not what is inside it
        "/srv/thx/*",
        "/srv/th.log",
        "/srv/other/*/*",
        "/var/log/*/*.log",
        "/srv/t/*",
        "/*/*",
    ],
)
def test_a_glob_that_cannot_reach_into_state_dir_is_fine(pattern: str) -> None:
    assert parse_config(config_text("/srv/th", pattern), {}).sources[0].paths == (pattern,)


def test_the_default_state_dir_is_checked() -> None:
    assert problems(config_text(None, "/var/lib/*/rejected/*.jsonl")) == [
        message(0, "/var/lib/tailhook")
    ]


def test_a_hidden_state_dir_is_out_of_reach_of_a_star_as_for_glob() -> None:
    assert glob_reaches_into("/home/me/.th/*", "/home/me/.th")
    assert glob_reaches_into("/home/me/.*/*", "/home/me/.th")
    assert not glob_reaches_into("/home/me/*/*", "/home/me/.th")


def test_relative_globs_and_state_dir_are_compared_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert glob_reaches_into("state/*", "state")
    assert glob_reaches_into(f"{tmp_path}/state/*", "state")
    assert glob_reaches_into("*/rejected/*", "./state/")
    assert not glob_reaches_into("logs/*", "state")


def test_check_config_reports_it_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(str(tmp_path / "state"), f"{tmp_path}/*/*.jsonl"))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message(0, str(tmp_path / "state"))]


def test_a_symlink_into_state_dir_is_never_tailed(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Tailing the rejected-lines file would reject each of its lines again, into itself:
    a loop without end. The glob cannot say so; the symlink is found at run time."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_bytes(b'{"event": "nope"}\n')
    config = file_config(tmp_path, receiver.url, (f"{logs}/*.log",))
    rejected_file = config.state_dir / "rejected" / "waf.jsonl"
    caplog.set_level(logging.INFO, logger="agent")
    with running_agent(config) as agent:

        def rejected() -> float:
            labels = {"source": "waf", "event_type": "unknown", "outcome": "unknown_event"}
            return agent.registry.get_sample_value("tailhook_events_total", labels) or 0.0

        assert wait_until(lambda: rejected() == 1 and rejected_file.exists(), 5)
        os.symlink(rejected_file, logs / "own.log")
        os.symlink(config.state_dir / "spool.db", logs / "spool.log")
        with (logs / "a.log").open("ab") as out:
            out.write(hit_line(1) + b"\n")
        assert receiver.wait_for(lambda reqs: len(reqs) >= 1, 5)
        # Three rescans and more: a tailed rejected file would have been read by now.
        assert not wait_until(lambda: rejected() > 1, 3.5)
        files = agent.registry.get_sample_value("tailhook_source_files", {"source": "waf"})
        assert files == 1
    assert received_ids(receiver.bodies_json()) == ["hit-1"]
    warnings = [r for r in caplog.records if "inside state_dir" in r.getMessage()]
    assert len(warnings) == 1
    assert caplog.text.count("Tailing a file") == 1
