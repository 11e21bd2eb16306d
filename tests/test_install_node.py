"""The README's "Install on a node", done in a temporary root standing in for /: a venv
at ROOT/opt/tailhook with the project installed by pip, ``systemd-sysusers --root``
creating the user from ``systemd/sysusers.d``, ``systemd-tmpfiles --root`` making the
directories with their modes, then the unit's own ExecStart= command line (paths under
ROOT) run as that unprivileged user, with the unit's groups, umask, environment and no
capabilities, reading a WAF log it may read only through group ``adm``: it becomes ready
(READY=1 on a notify socket), delivers, keeps its state 0600, and logs JSON lines.

Switching users needs root (the test skips without it). The systemd tools and Debian's
``/usr/bin/python3`` (whose venv an unprivileged user can run, unlike one under /root)
are needed too: without them it skips, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.agent_support import hit_line, received_ids, wait_until
from tests.support.agent_process import REPO
from tests.support.notify_socket import NotifySocket
from tests.support.receiver import Receiver
from tests.test_systemd_unit import seconds, systemd_tool, unit_settings

SYSTEM_PYTHON = Path("/usr/bin/python3")
ADM_GID = 4  # Debian's adm: the group the WAF's logs are readable by


def need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def root() -> Iterator[Path]:
    """A stand-in for /, traversable by an unprivileged user (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="tailhook-node-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def run(*argv: str | Path) -> str:
    result = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def install_the_project(root: Path) -> Path:
    """``python3 -m venv /opt/tailhook; /opt/tailhook/bin/pip install .``, from a clean
    copy of what the wheel is built from (as the Dockerfile does)."""
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("agent", "schemas"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "opt" / "tailhook"
    run(SYSTEM_PYTHON, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", source)
    return venv


def create_user_and_directories(root: Path) -> tuple[int, int]:
    """The README's steps with ``--root``: the files installed where the packages put
    them, then systemd-sysusers and systemd-tmpfiles. Returns the user's uid and gid."""
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text(f"root:x:0:\nadm:x:{ADM_GID}:\n")
    for kind in ("sysusers.d", "tmpfiles.d"):
        target = root / "usr" / "lib" / kind / "tailhook.conf"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "systemd" / kind / "tailhook.conf", target)
    run(systemd_tool("systemd-sysusers"), f"--root={root}")
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    _, _, uid, gid, _, home, shell = users["tailhook"]
    assert (home, shell) == ("/var/lib/tailhook", "/usr/sbin/nologin")
    assert 0 < int(uid) < 1000  # a system user
    run(systemd_tool("systemd-tmpfiles"), f"--root={root}", "--create")
    return int(uid), int(gid)


def mode_and_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.slow
def test_install_on_a_node_then_run_the_units_command_as_its_user(
    root: Path, receiver: Receiver
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to the service user needs root")
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    need(SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} (Debian's python3) is missing")

    venv = install_the_project(root)
    uid, gid = create_user_and_directories(root)
    etc, state = root / "etc" / "tailhook", root / "var" / "lib" / "tailhook"
    assert mode_and_owner(etc) == (0o750, 0, gid)
    assert mode_and_owner(etc / "env") == (0o600, 0, 0)
    assert mode_and_owner(state) == (0o700, uid, gid)

    # The WAF's log, readable by group adm only (nginx's logrotate: create 0640 www-data adm).
    waf = root / "var" / "log" / "waf"
    waf.mkdir(parents=True)
    detections = waf / "detections.log"
    detections.write_bytes(b"")
    for path, mode in ((waf, 0o750), (detections, 0o640)):
        os.chown(path, 0, ADM_GID)
        path.chmod(mode)
    config = etc / "config.yaml"
    config.write_text(
        f"state_dir: {state}\n"
        "metrics: {listen: 127.0.0.1:0}\n"
        "log: {level: info, format: json}\n"
        f"sources: [{{name: waf, type: file, paths: [{detections}]}}]\n"
        f"webhooks: [{{name: soc, url: '{receiver.url}', events: [hit]}}]\n"
    )
    config.chmod(0o644)
    run(systemd_tool("systemd-tmpfiles"), f"--root={root}", "--create")  # at every boot
    assert mode_and_owner(config) == (0o640, 0, gid)  # `z`: the config is not world-readable

    unit = unit_settings((REPO / "systemd" / "tailhook.service").read_text())
    [exec_start] = unit["ExecStart"]
    opt = str(root / "opt" / "tailhook")
    command = [arg.replace("/opt/tailhook", opt) for arg in shlex.split(exec_start)]
    assert command[0] == str(venv / "bin" / "tailhook")
    environment = dict(value.split("=", 1) for value in unit["Environment"])
    environment["TAILHOOK_CONFIG"] = str(root) + environment["TAILHOOK_CONFIG"]
    assert unit["User"] == ["tailhook"] and unit["SupplementaryGroups"] == ["adm"]
    assert unit["UMask"] == ["0077"]
    watchdog_usec = str(int(seconds(unit["WatchdogSec"][0]) * 1_000_000))

    (root / "run").mkdir(mode=0o755)
    log_path = root / "agent.log"
    with NotifySocket(root / "run" / "notify") as systemd:
        (root / "run" / "notify").chmod(0o777)  # as /run/systemd/notify
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={uid}",
                    f"--regid={gid}",
                    f"--groups={ADM_GID}",  # SupplementaryGroups=adm
                    "--inh-caps=-all",
                    "--bounding-set=-all",  # CapabilityBoundingSet=
                    "--no-new-privs",
                    *command,
                ],
                env={
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    **environment,
                    "NOTIFY_SOCKET": systemd.env,
                    "WATCHDOG_USEC": watchdog_usec,
                },
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd="/",
                umask=0o077,
            )
        try:
            ready = systemd.wait_for("READY", timeout=30)
            assert ready.pid == process.pid
            entries = [json.loads(line) for line in log_path.read_text().splitlines()]
            [running] = [e for e in entries if e["message"] == "tailhook is running"]
            base = running["metrics"].removesuffix("/metrics")
            assert requests.get(base + "/readyz", timeout=5).status_code == 200
            status = Path(f"/proc/{process.pid}/status").read_text()
            assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
            assert f"Groups:\t{ADM_GID} " in status or f"Groups:\t{ADM_GID}\n" in status
            assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status

            with detections.open("ab") as out:
                out.write(hit_line(1) + b"\n")
            assert receiver.wait_for(1, timeout=15)
            assert received_ids(receiver.bodies_json()) == ["hit-1"]
            assert wait_until(lambda: (state / "spool.db").exists(), 5)
            for kept in state.iterdir():
                assert mode_and_owner(kept) == (0o600, uid, gid), kept

            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            systemd.wait_for("STOPPING")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    # What journald would keep as MESSAGE: one JSON object per line, time, level, message.
    lines = log_path.read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "message"} <= entry.keys(), line
