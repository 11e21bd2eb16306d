"""``systemd/tailhook.service`` as systemd itself judges it: ``systemd-analyze verify``
finds nothing, ``systemd-analyze security`` rates its exposure 2.0 or less (the figure
the README gives), its timeouts fit tailhook's, and CPython with every dependency runs
under its ``MemoryDenyWriteExecute=yes`` (systemd 252's own seccomp rules, applied by
``tests/support/mdwe.py``).

Without ``systemd-analyze`` these tests skip, except in CI (``CI`` set), where they fail:
``.ci/run`` installs Debian's ``systemd`` package for them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Config
from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import REPO, file_source_yaml
from tests.support.receiver import Receiver

UNIT = REPO / "systemd" / "tailhook.service"
SYSUSERS = REPO / "systemd" / "sysusers.d" / "tailhook.conf"
MDWE = REPO / "tests" / "support" / "mdwe.py"
EXPOSURE = re.compile(r"Overall exposure level for tailhook\.service: (\d+\.\d)")


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: CI must install Debian's systemd package")
        pytest.skip(f"{name} is not installed (Debian: apt-get install systemd)")
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at this checkout's tailhook, as on a node where
    /opt/tailhook holds it: verify checks that the command exists."""
    tailhook = Path(sys.executable).parent / "tailhook"
    assert tailhook.exists(), tailhook
    copy = tmp_path / "tailhook.service"
    text = UNIT.read_text()
    assert "ExecStart=/opt/tailhook/bin/tailhook run" in text
    copy.write_text(text.replace("/opt/tailhook/bin/tailhook", str(tailhook)))
    return copy


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = systemd_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_exposure_is_2_or_less_and_the_readme_gives_it() -> None:
    analyze = systemd_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = EXPOSURE.search(result.stdout)
    assert match, result.stdout + result.stderr
    exposure = match[1]
    assert float(exposure) <= 2.0, result.stdout
    readme = (REPO / "README.md").read_text()
    assert f"Overall exposure level for tailhook.service: {exposure} OK" in readme


def test_the_unit_fits_tailhooks_timeouts_exit_codes_and_user() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecReload"] == ["kill -HUP $MAINPID"]
    # A webhook request may take request_timeout (15 s by default) within a step.
    assert seconds(unit["WatchdogSec"][0]) >= 30
    assert seconds(unit["TimeoutStopSec"][0]) > Config().shutdown_timeout + 15
    assert unit["RestartPreventExitStatus"] == ["2"]  # an invalid config
    assert unit["StateDirectory"] == ["tailhook"] and Config().state_dir == Path(
        "/var/lib/tailhook"
    )
    assert unit["User"] == ["tailhook"]
    assert re.search(r"^u\s+tailhook\s", SYSUSERS.read_text(), re.MULTILINE)
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]


def test_the_seccomp_filter_of_memory_deny_write_execute_refuses_wx_memory() -> None:
    probe = (
        "import mmap\n"
        "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (plain.returncode, plain.stdout) == (0, "")  # allowed without the filter
    result = subprocess.run(
        [sys.executable, str(MDWE), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "refused\n", "")


@pytest.mark.slow
def test_the_agent_runs_and_delivers_under_memory_deny_write_execute(
    tmp_path: Path, receiver: Receiver
) -> None:
    logs = tmp_path / "detections.log"
    logs.write_bytes(b"")
    config = tmp_path / "config.yaml"
    config.write_text(file_source_yaml(tmp_path / "state", receiver.url, [str(logs)]))
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(MDWE), sys.executable, "-m", "agent", "run", "-c", str(config)],
            stderr=log,
            cwd=REPO,
        )
    try:
        assert wait_until(lambda: "tailhook is running" in log_path.read_text(), 30), (
            log_path.read_text()
        )
        seccomp = Path(f"/proc/{process.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", seccomp, re.MULTILINE)  # filtered
        with logs.open("ab") as out:
            out.write(hit_line(1) + b"\n")
        assert receiver.wait_for(1, timeout=15)
        assert received_ids(receiver.bodies_json()) == ["hit-1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert "Traceback" not in log_path.read_text()
