"""``tailhook run`` as a real subprocess, for tests that need its pid: SIGKILL, its open
file descriptors (``/proc/PID/fd``), its memory (``VmHWM``) and its CPU time.

Its stderr goes to a file, not a pipe, so a chatty agent never blocks on a full pipe
that nobody reads. `AgentProcess` waits for the ``tailhook is running`` log line (after
the point where this run started writing), reads the metrics address from it, and kills
only the process it started, by pid, at exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import procfs

REPO = Path(__file__).resolve().parents[2]


def file_source_yaml(
    state: Path,
    url: str,
    paths: list[str],
    *,
    metrics: bool = True,
    **source_settings: str,
) -> str:
    """A config with one file source ``waf`` and one webhook ``soc`` taking every type."""
    settings = "".join(f"    {key}: {value}\n" for key, value in source_settings.items())
    return (
        f"state_dir: {state}\n"
        + ("metrics:\n  listen: 127.0.0.1:0\n" if metrics else "")
        + "log:\n  level: info\n  format: json\n"
        "sources:\n"
        "  - name: waf\n"
        "    type: file\n"
        f"    paths: {json.dumps(paths)}\n"
        f"{settings}"
        "webhooks:\n"
        "  - name: soc\n"
        f"    url: {url}\n"
        "    events: [hit, vulnerability, system, scope]\n"
        "    batch: {max_wait: 50ms}\n"
        "    retry: {initial_backoff: 50ms, max_backoff: 500ms}\n"
        "shutdown_timeout: 5s\n"
    )


class AgentProcess:
    """One ``tailhook run -c CONFIG`` process; use as a context manager."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        start_timeout: float = 30.0,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        """``command_prefix``: a command that runs tailhook (``setpriv ...``), if any."""
        self.config = config
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.command_prefix = command_prefix
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.command_prefix,
                    sys.executable,
                    "-m",
                    "agent",
                    "run",
                    "-c",
                    str(self.config),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=REPO,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tailhook exited at start:\n{self.log_since(offset)}")
            for line in self.log_since(offset).splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("message") == "tailhook is running":
                    self.base = entry["metrics"].removesuffix("/metrics")
                    return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"tailhook did not start:\n{self.log_since(offset)}")

    def log_since(self, offset: int = 0) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", errors="replace")

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on ``/metrics``, or None if it is not there."""
        text = requests.get(self.base + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def open_files(self) -> list[str]:
        """Where each of the process's file descriptors points (``/proc/PID/fd``)."""
        targets = []
        fd_dir = Path(f"/proc/{self.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                targets.append(os.readlink(fd))
            except FileNotFoundError:  # closed while listing
                continue
        return targets

    def status_kib(self, field: str) -> int:
        """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``)."""
        return procfs.status_kib(self.pid, field)

    def cpu_seconds(self) -> float:
        """User and system CPU seconds so far (``/proc/PID/stat``)."""
        return procfs.cpu_seconds(self.pid)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
