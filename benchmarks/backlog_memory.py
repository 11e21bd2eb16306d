"""Memory with a backlog: the agent's resident memory stays flat while events pile up.

The real ``tailhook run`` tails a file on tmpfs; its webhook is down (the loopback
receiver answers every request ``503``), so every event read stays in the spool. Lines
(``benchmarks/lines.py``, ~800 bytes) are appended in steps up to 10 %, 30 % and 100 %
of ``--events`` (1,000,000 by default); once the agent has read each step
(``tailhook_source_lines_total``), its resident memory (VmRSS) and its peak (VmHWM) are
read from /proc, with the spool's size on disk.

The target: the peak at the largest backlog is at most ``MAX_GROWTH_MIB`` above the
peak at the smallest; the exit status is 1 otherwise.

Run: ``python benchmarks/backlog_memory.py [--events N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from harness import (
    AgentProcess,
    Receiver,
    agent_config,
    load_average,
    start_agent,
    status_mib,
    work_dir,
)
from lines import realistic_hit_line

#: Most the peak RSS may grow from the smallest backlog to the largest, MiB.
MAX_GROWTH_MIB = 5.0
#: The steps, as shares of ``--events``.
STEPS = (0.1, 0.3, 1.0)
#: The longest the agent may take to read one step.
STEP_LIMIT = 300.0
#: Lines written at once.
WRITE_LINES = 10_000


def append_lines(log: Path, first: int, end: int, rng: random.Random) -> None:
    """Append lines ``first`` to ``end`` (exclusive), ``WRITE_LINES`` per write."""
    with log.open("ab") as out:
        for start in range(first, end, WRITE_LINES):
            stop = min(end, start + WRITE_LINES)
            out.write(b"".join(realistic_hit_line(n, rng) + b"\n" for n in range(start, stop)))


def wait_read(agent: AgentProcess, count: int) -> None:
    """Wait until the agent has read ``count`` lines; SystemExit after ``STEP_LIMIT``."""
    started = time.monotonic()
    while (read := agent.metric("tailhook_source_lines_total", source="bench") or 0) < count:
        if time.monotonic() - started > STEP_LIMIT:
            raise SystemExit(f"the agent read {read:.0f} of {count} lines in {STEP_LIMIT:.0f} s")
        time.sleep(0.2)


def wait_backlog(agent: AgentProcess, count: int, limit: float = 10.0) -> float:
    """The webhook's backlog gauge (set every second) once it shows ``count`` events,
    or what it shows after ``limit`` seconds."""
    started = time.monotonic()
    while True:
        backlog = agent.metric("tailhook_webhook_backlog_events", webhook="sink") or 0.0
        if backlog >= count or time.monotonic() - started > limit:
            return backlog
        time.sleep(0.2)


def spool_mib(state: Path) -> float:
    return sum(path.stat().st_size for path in state.glob("spool.db*")) / (1 << 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="the largest backlog")
    parser.add_argument("--dir", type=Path, help="where the lines and state go (/dev/shm)")
    args = parser.parse_args()
    steps = sorted({max(1, int(share * args.events)) for share in STEPS})
    rng = random.Random(11)
    peaks: list[float] = []
    with work_dir(args.dir) as tmp, Receiver("--status", "503") as receiver:
        logs = tmp / "logs"
        logs.mkdir()
        log = logs / "detections.log"
        log.touch()
        config = agent_config(tmp, log, receiver.url, spool="{max_bytes: 4GiB}")
        agent = start_agent(tmp, config)
        try:
            print(f"webhook down (503); backlog up to {args.events:,} events in {tmp}")
            print(f"{load_average()}; at start: VmRSS {status_mib(agent.pid, 'VmRSS'):.1f} MiB")
            print(f"{'backlog':>10} {'VmRSS MiB':>10} {'VmHWM MiB':>10} {'spool MiB':>10}")
            written = 0
            for step in steps:
                append_lines(log, written, step, rng)
                written = step
                wait_read(agent, step)
                rss, peak = status_mib(agent.pid, "VmRSS"), status_mib(agent.pid, "VmHWM")
                peaks.append(peak)
                print(f"{step:>10,} {rss:>10.1f} {peak:>10.1f} {spool_mib(tmp / 'state'):>10.1f}")
            backlog = wait_backlog(agent, written)
            refused = int(receiver.stats()["requests"])
        finally:
            agent.terminate()
    growth = peaks[-1] - peaks[0]
    met = growth <= MAX_GROWTH_MIB
    print(f"backlog gauge at the end: {backlog:,.0f} events; {refused} requests refused")
    print(
        f"peak RSS growth from {steps[0]:,} to {steps[-1]:,} events: {growth:.1f} MiB  "
        f"target <= {MAX_GROWTH_MIB:.0f} MiB  {'ok' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
