"""``TAILHOOK_METRICS_LISTEN`` overrides ``metrics.listen`` (the image sets
``0.0.0.0:9717``): for ``tailhook run`` at start and at every reload, and for
``check-config``; an invalid value is exit 2 naming the variable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from agent.commands import with_environment
from agent.config import Config, MetricsConfig
from agent.errors import ConfigError
from tests.agent_support import wait_until
from tests.support.agent_process import REPO, AgentProcess, file_source_yaml
from tests.support.receiver import Receiver


def test_the_variable_replaces_the_configured_address() -> None:
    config = Config(metrics=MetricsConfig("127.0.0.1", 9717))
    assert with_environment(config, {}) is config
    assert with_environment(config, {"TAILHOOK_METRICS_LISTEN": "0.0.0.0:9717"}).metrics == (
        MetricsConfig("0.0.0.0", 9717)
    )
    assert with_environment(config, {"TAILHOOK_METRICS_LISTEN": "[::]:9000"}).metrics == (
        MetricsConfig("::", 9000)
    )


@pytest.mark.parametrize("value", ["", "9717", "0.0.0.0:99999", "[nope]:1"])
def test_an_invalid_value_is_a_problem_named_after_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        with_environment(Config(), {"TAILHOOK_METRICS_LISTEN": value})
    (problem,) = raised.value.problems
    assert problem.path == "TAILHOOK_METRICS_LISTEN"
    assert repr(value) in problem.message


def write_config(tmp_path: Path, url: str) -> Path:
    """A config whose own ``metrics.listen`` is the default (127.0.0.1:9717)."""
    config = tmp_path / "config.yaml"
    text = file_source_yaml(tmp_path / "state", url, [f"{tmp_path}/*.log"], metrics=False)
    config.write_text(text)
    return config


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]"])
def test_run_listens_where_the_variable_says_and_a_reload_keeps_it_quietly(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """Not the configured 127.0.0.1:9717; and a reload of a file that still says so
    neither moves the listener nor warns that metrics.listen waits for a restart."""
    config = write_config(tmp_path, receiver.url)
    monkeypatch.setenv("TAILHOOK_METRICS_LISTEN", f"{host}:0")
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert agent.base.startswith(f"http://{host}:")
        assert requests.get(agent.base + "/readyz", timeout=5).status_code == 200
        offset = len(agent.log_since())
        os.kill(agent.pid, signal.SIGHUP)
        assert wait_until(
            lambda: agent.metric("tailhook_config_reloads_total", result="success") == 1.0, 10
        )
        after = [json.loads(line) for line in agent.log_since(offset).splitlines()]
        assert agent.terminate() == 0
    assert [e["message"] for e in after if e["level"] != "info"] == []


def test_run_exits_2_naming_the_variable_when_its_value_is_invalid(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, receiver.url)
    env = {**os.environ, "TAILHOOK_METRICS_LISTEN": "all-addresses"}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
    )
    assert done.returncode == 2
    (entry,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert entry["level"] == "error"
    assert entry["message"].startswith("TAILHOOK_METRICS_LISTEN: 'all-addresses' must be HOST:PORT")
    checked = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
    )
    assert checked.returncode == 2
    assert checked.stderr.startswith("TAILHOOK_METRICS_LISTEN: 'all-addresses' must be")
