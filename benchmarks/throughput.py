"""Throughput of the whole agent against its in-process floor, measured in one run.

For each case (``--case``: ``475``, the tests' 475-byte hit line, 200,000 lines by
default; ``800``, ``benchmarks/lines.py``'s realistic ~800-byte hit lines, 1,000,000 by
default; ``--events`` sets both), with the lines written to a file on tmpfs (removed
after):

1. The floor, in this process (``stages.measure_floor``): read, split,
   ``orjson.loads``, jsonschema_rs with the project's hit schema, map,
   ``orjson.dumps``: its CPU µs per event and its events/s, measured just before the
   agent and just after it; the ratios use the mean of the two.
2. The stages of the agent's path, in this process, on the same lines
   (``stages.measure_stages``): what each costs per event.
3. The agent: ``tailhook run`` as a subprocess on the same lines (``start_at:
   beginning``), the spool on, ``batch: {max_events: 500}``, delivering to a loopback
   receiver in another process. From the moment the file appears to the last event
   received: events/s, the agent's CPU per event (/proc) and its peak RSS (VmHWM).
4. The receiver's own CPU over the run: its share of a core, and the rate one core of
   it could take, to show it was not the bottleneck.

The targets (issue 11) are ratios to the floor measured in the same run, so a noisy
shared machine moves both sides: agent CPU per event at most ``MAX_CPU_RATIO`` times the
floor's, agent events/s at least ``MIN_RATE_RATIO`` times the floor's, peak RSS at most
``MAX_PEAK_RSS_MIB``. The exit status is 1 when any target of any case is missed.

Run: ``python benchmarks/throughput.py [--case 475|800|all] [--events N]``;
``--profile DIR`` also records each agent run with py-spy (``benchmarks/top.py``
summarises it; a profiled run is slower, so its figures are not held to the targets).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    Receiver,
    agent_config,
    cpu_ticks,
    descendants,
    load_average,
    machine_busy,
    start_agent,
    start_py_spy,
    status_mib,
    tree_cpu_seconds,
    work_dir,
)
from lines import write_realistic_lines
from stages import (
    AGENT_PATH,
    EXACT_PARTS,
    PARTS,
    Floor,
    check_floor_matches_format,
    measure_floor,
    measure_stages,
)

from tests.agent_support import hit_line

#: Agent CPU per event over the floor's: the target, and what issue 11 aims at.
MAX_CPU_RATIO = 0.85
AIM_CPU_RATIO = 0.6
#: Agent events/s over the floor's (events per wall-clock second, in one process).
MIN_RATE_RATIO = 1.0
#: The agent's peak resident memory (VmHWM), MiB.
MAX_PEAK_RSS_MIB = 80.0
#: The longest the agent may take to deliver a case.
TIME_LIMIT = 300.0
#: Above this share of a core, the receiver may have held the agent back.
RECEIVER_BUSY = 0.5


def write_hit_lines(path: Path, count: int) -> int:
    with path.open("wb") as out:
        for n in range(count):
            out.write(hit_line(n) + b"\n")
    return path.stat().st_size


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    events: int  # by default
    write: Callable[[Path, int], int]


CASES = {
    "475": Case("475", "tests.agent_support.hit_line", 200_000, write_hit_lines),
    "800": Case("800", "benchmarks/lines.py, realistic", 1_000_000, write_realistic_lines),
}


@dataclass(frozen=True)
class AgentRun:
    wall: float
    cpu: float
    rss: float  # MiB, peak
    receiver_cpu: float
    requests: int


def run_agent(tmp: Path, log: Path, count: int, profile: Path | None, workers: int = 1) -> AgentRun:
    """``tailhook run`` delivers the ``count`` lines of ``log`` to a receiver process;
    with ``workers``, its worker processes' CPU and peak RSS count too."""
    with Receiver() as receiver:
        config = agent_config(tmp, log, receiver.url, workers=workers)
        hold = tmp / "hold.log"
        log.rename(hold)  # the agent starts with nothing to read (start-up is not per event)
        agent = start_agent(tmp, config)
        spy = None
        try:
            if profile is not None:
                spy = start_py_spy(agent.pid, profile)
            cpu_before, rx_before = tree_cpu_seconds(agent.pid), receiver.stats()
            started = time.monotonic()
            hold.rename(log)
            wall = receiver.wait_events(count, TIME_LIMIT) - started
            cpu = tree_cpu_seconds(agent.pid) - cpu_before
            rss = status_mib(agent.pid, "VmHWM") + sum(
                status_mib(child, "VmHWM") for child in descendants(agent.pid)
            )
            rx_after = receiver.stats()
        finally:
            agent.terminate()
            if spy is not None:
                spy.wait(30)
    return AgentRun(
        wall,
        cpu,
        rss,
        rx_after["cpu_seconds"] - rx_before["cpu_seconds"],
        int(rx_after["requests"] - rx_before["requests"]),
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def run_case(
    case: Case, count: int, base: Path | None, profile: Path | None, workers: int = 1
) -> bool:
    """Measure one case and print its figures; True if every target was met."""
    with work_dir(base) as tmp:
        logs = tmp / "logs"
        logs.mkdir()
        log = logs / "detections.log"
        size = case.write(log, count)
        print(f"== case {case.name}: {count:,} lines of {size / count:.0f} bytes ({case.what})")
        print(f"   in {tmp}; {load_average()}")
        check_floor_matches_format(log)
        ticks = cpu_ticks()
        stages_dir = tmp / "stages"
        stages_dir.mkdir()
        with Receiver() as receiver:
            stages = measure_stages(log, stages_dir, receiver.url)
        floors = [measure_floor(log)]
        run = run_agent(tmp, log, count, profile, workers)
        floors.append(measure_floor(log))
        print(f"   over the case: {machine_busy(ticks, cpu_ticks())} (of {os.cpu_count()} CPUs)")
    floor = Floor(sum(one.cpu_per_event for one in floors) / 2, sum(one.rate for one in floors) / 2)
    per_event = run.cpu / count
    rate = count / run.wall
    cpu_ratio, rate_ratio = per_event / floor.cpu_per_event, rate / floor.rate
    before, after = (f"{one.cpu_per_event * 1e6:.2f} µs, {one.rate:,.0f}/s" for one in floors)
    print(
        f"floor (in-process):   {floor.cpu_per_event * 1e6:6.2f} µs CPU/event, "
        f"{floor.rate:,.0f} events/s (mean of {before} before the agent, {after} after)"
    )
    print(
        f"agent (tailhook run): {per_event * 1e6:6.2f} µs CPU/event, {rate:,.0f} events/s "
        f"({run.wall:.2f} s), peak RSS {run.rss:.1f} MiB, {run.requests} requests"
        + (f"; workers: {workers} (their CPU and peak RSS included)" if workers > 1 else "")
    )
    busy = run.receiver_cpu / run.wall
    capacity = count / run.receiver_cpu if run.receiver_cpu else float("inf")
    print(
        f"receiver:             {100 * busy:.0f}% of a core; one core of it takes "
        f"~{capacity:,.0f} events/s: "
        + ("not the bottleneck" if busy < RECEIVER_BUSY else "MAY BE THE BOTTLENECK")
    )
    print_stages(stages, per_event)
    met = [
        cpu_ratio <= MAX_CPU_RATIO,
        rate_ratio >= MIN_RATE_RATIO,
        run.rss <= MAX_PEAK_RSS_MIB,
    ]
    print(
        f"agent CPU / floor CPU:   {cpu_ratio:5.2f}  target <= {MAX_CPU_RATIO} "
        f"(aim {AIM_CPU_RATIO})  {verdict(met[0])}"
    )
    print(f"agent rate / floor rate: {rate_ratio:5.2f}  target >= {MIN_RATE_RATIO}  "
          f"{verdict(met[1])}")  # fmt: skip
    print(
        f"agent peak RSS:      {run.rss:5.1f} MiB  target <= {MAX_PEAK_RSS_MIB:.0f} MiB  "
        f"{verdict(met[2])}"
    )
    return all(met)


def print_stages(stages: dict[str, float], agent_per_event: float) -> None:
    """The per-stage table, its sum, and what the agent spent beyond it."""
    print("stages, in-process on the same lines (µs CPU per event):")
    path_total = 0.0
    for stage in AGENT_PATH:
        path_total += stages.get(stage, 0.0)
        print(f"   {stage:<48} {stages.get(stage, 0.0) * 1e6:6.2f}")
        if stage.startswith("pipeline"):
            for part in PARTS:
                print(f"   {part:<48} {stages.get(part, 0.0) * 1e6:6.2f}")
    print(f"   {'sum of the agent path':<48} {path_total * 1e6:6.2f}")
    print(
        f"   {'agent beyond the sum (threads, waits, locks)':<48} "
        f"{(agent_per_event - path_total) * 1e6:6.2f}"
    )
    print("   the exact path's parts (the floor's), on the same lines:")
    for part in EXACT_PARTS:
        print(f"   {part:<48} {stages.get(part, 0.0) * 1e6:6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--events", type=int, help="lines per case (default: the case's)")
    parser.add_argument("--dir", type=Path, help="where the lines and state go (/dev/shm)")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles into this dir")
    parser.add_argument(
        "--workers", type=int, default=1, help="the source's ``workers`` (default 1, the default)"
    )
    args = parser.parse_args()
    cases = list(CASES.values()) if args.case == "all" else [CASES[args.case]]
    met = True
    for case in cases:
        profile = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = args.profile / f"agent-{case.name}.raw"
        ok = run_case(case, args.events or case.events, args.dir, profile, args.workers)
        met = met and ok
    print("all targets met" if met else "a target was missed")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
