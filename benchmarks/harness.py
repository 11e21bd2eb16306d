"""What the agent benchmarks share: a working directory on tmpfs, the loopback receiver
in its own process, a ``tailhook run`` config, and the readings of a process from /proc
(CPU seconds, resident and peak memory).

The real agent runs through ``tests.support.agent_process.AgentProcess`` (``python -m
agent run -c CONFIG``, its log in a file, started once it logs ``tailhook is running``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.agent_process import AgentProcess  # noqa: E402
from tests.support.procfs import cpu_seconds, descendants, status_kib  # noqa: E402

__all__ = [
    "REPO",
    "AgentProcess",
    "Receiver",
    "agent_config",
    "cpu_seconds",
    "descendants",
    "work_dir",
]

#: Where lines and state go by default: tmpfs, so the disk is not what is measured.
TMPFS = Path("/dev/shm")


@contextlib.contextmanager
def work_dir(base: Path | None = None) -> Iterator[Path]:
    """A fresh directory (on /dev/shm when it exists), removed with what is in it."""
    parent = base if base is not None else (TMPFS if TMPFS.is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="tailhook-bench-", dir=parent) as name:
        yield Path(name)


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status in MiB: ``VmHWM`` (peak RSS), ``VmRSS``."""
    return status_kib(pid, field) / 1024


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of the processes below it that are alive now."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages and the CPU count, for the report."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, by kind (the ``cpu`` line of /proc/stat)."""
    return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_busy(before: list[int], after: list[int]) -> str:
    """How busy the whole machine was between two ``cpu_ticks``: every process's share
    of all CPUs (not only ours), and the share the hypervisor stole."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent) or 1
    idle = spent[3] + spent[4]  # idle, iowait
    steal = spent[7] if len(spent) > 7 else 0
    return f"machine {100 * (total - idle) / total:.0f}% busy, {100 * steal / total:.0f}% stolen"


class Receiver:
    """``benchmarks/receiver.py`` in its own process (so its CPU is not ours)."""

    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("receiver.py")), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, float]:
        """``events``, ``requests``, ``bytes`` and its ``cpu_seconds`` so far."""
        return self.get("/stats")  # type: ignore[no-any-return]

    def wait_events(self, count: int, limit: float, poll: float = 0.05) -> float:
        """Wait until ``count`` events have arrived; the monotonic time it saw them.
        Raises SystemExit after ``limit`` seconds."""
        started = time.monotonic()
        while (received := int(self.stats()["events"])) < count:
            if time.monotonic() - started > limit:
                raise SystemExit(f"gave up after {limit:.0f} s with {received}/{count} events")
            time.sleep(poll)
        return time.monotonic()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: py-spy, sampling every thread on CPU 250 times a second without stopping the agent.
PY_SPY = (str(Path(sys.executable).with_name("py-spy")), "record", "-r", "250", "-f", "raw")
PY_SPY_OPTIONS = ("--threads", "--nonblocking")


def start_py_spy(pid: int, profile: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` into ``profile`` (collapsed stacks: ``top.py`` reads
    them) until the process ends; it has attached when this returns."""
    if not Path(PY_SPY[0]).exists():
        raise SystemExit(f"a profile needs py-spy at {PY_SPY[0]} (the test extras)")
    spy = subprocess.Popen(
        [*PY_SPY, *PY_SPY_OPTIONS, "-o", str(profile), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return spy


def agent_config(
    directory: Path,
    log: Path,
    url: str,
    *,
    batch: str = "{max_events: 500}",
    spool: str = "",
    retry: str = "",
    workers: int = 1,
) -> Path:
    """A ``tailhook run`` config: one file source on ``log``, one webhook taking hits,
    the spool in ``directory/state``; info logs (the start line) to a file."""
    config = directory / "config.yaml"
    config.write_text(
        f"state_dir: {directory / 'state'}\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "log: {level: info, format: json}\n"
        + (f"spool: {spool}\n" if spool else "")
        + f"sources: [{{name: bench, type: file, paths: ['{log}'], workers: {workers}}}]\n"
        f"webhooks: [{{name: sink, url: '{url}', events: [hit], batch: {batch}"
        + (f", retry: {retry}" if retry else "")
        + "}]\n"
    )
    return config


def start_agent(directory: Path, config: Path) -> AgentProcess:
    """``tailhook run`` started and ready (its log in ``directory/agent.log``)."""
    return AgentProcess(config, directory / "agent.log", start_timeout=60.0).start()
