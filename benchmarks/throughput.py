"""Throughput of the whole agent against its in-process floor, measured in one run.

1. The floor: reading the hit lines from the file, splitting them, ``orjson.loads``,
   validating with jsonschema_rs, mapping and ``orjson.dumps``, in this process,
   with none of the agent's machinery: CPU µs per event.
2. The agent: ``tailhook run`` as a subprocess on the same N lines (``start_at:
   beginning``) with the spool on, delivering to a loopback receiver in another
   process. From ready to the last event received: events/s, the agent's CPU seconds
   per event (from /proc) and its peak RSS (VmHWM).
3. The receiver's own CPU time over the run, to show it was not the bottleneck.

The target is a ratio, so a noisy shared machine does not move it: the agent's CPU per
event divided by the floor's must stay under ``--max-ratio`` (default 2.0).
Run: ``python benchmarks/throughput.py [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from agent.formats import MappingContext, load_format
from agent.sources.lines import LineSplitter
from agent.spool import Checkpoint, NewSegment, Spool
from agent.telemetry import Metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agent_support import hit_line

TIME_LIMIT = 300.0


def write_lines(path: Path, count: int) -> int:
    with path.open("wb") as out:
        for n in range(count):
            out.write(hit_line(n) + b"\n")
    return path.stat().st_size


def measure_floor(path: Path) -> float:
    """CPU seconds per event of read -> split -> parse -> validate -> map -> serialise."""
    fmt = load_format("native")
    ctx = MappingContext()
    started = time.process_time()
    splitter = LineSplitter(1 << 20)
    count = 0
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(256 * 1024):
            lines, _ = splitter.feed(chunk)
            for line in lines:
                _, notification = fmt.convert(orjson.loads(line), ctx)
                orjson.dumps(notification)
                count += 1
    return (time.process_time() - started) / count


def measure_spool(path: Path, directory: Path) -> tuple[float, float]:
    """CPU seconds per event of durability alone, in process: keeping the events (one
    segment per read, with its checkpoint, as the file source does) and delivering
    them (form, record, finish, delete), as a webhook sink does."""
    fmt = load_format("native")
    ctx = MappingContext()
    segments = []
    splitter = LineSplitter(1 << 20)
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(1 << 20):
            lines, _ = splitter.feed(chunk)
            segment = NewSegment()
            for line in lines:
                segment.add("hit", orjson.dumps(fmt.convert(orjson.loads(line), ctx)[1]))
            segments.append(segment)
    count = sum(len(segment) for segment in segments)
    spool = Spool(directory / "spool.db", Metrics(CollectorRegistry()))
    spool.configure_webhooks({"bench": frozenset({"hit"})})
    started = time.process_time()
    for n, segment in enumerate(segments):
        spool.append("bench", segment, Checkpoint("1:1", str(path), n, b""))
    kept = time.process_time()
    while (batch := spool.next_batch("bench", 500, 1 << 20)) is not None:
        spool.finish_batch("bench", batch)
    done = time.process_time()
    spool.close()
    return (kept - started) / count, (done - kept) / count


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def receiver_stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def run_agent(
    tmp: Path, log: Path, count: int, port: int, profile: Path | None = None
) -> dict[str, float]:
    config = tmp / "config.yaml"
    config.write_text(
        f"state_dir: {tmp / 'state'}\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "log: {level: warning}\n"
        f"sources: [{{name: bench, type: file, paths: ['{log}']}}]\n"
        f"webhooks: [{{name: sink, url: 'http://127.0.0.1:{port}/hook', events: [hit],"
        " batch: {max_events: 500}}]\n"
    )
    log.rename(tmp / "hold.log")  # the agent starts with nothing to read...
    command = [sys.executable, "-m", "agent", "run", "-c", str(config)]
    spy = None
    agent = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    if profile is not None:  # on-CPU samples of every thread, as collapsed stacks
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "--threads",
                "-o",
                str(profile),
                "-p",
                str(agent.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        time.sleep(2.0)  # ...until it is up (imports and start-up are not per-event cost)
        cpu_before = cpu_seconds(agent.pid)
        rx_before = receiver_stats(port)
        started = time.monotonic()
        (tmp / "hold.log").rename(log)
        received = 0
        while received < count:
            if time.monotonic() - started > TIME_LIMIT:
                raise SystemExit(f"gave up after {TIME_LIMIT}s with {received}/{count} events")
            time.sleep(0.05)
            received = int(receiver_stats(port)["events"])
        wall = time.monotonic() - started
        user, system = (a - b for a, b in zip(cpu_seconds(agent.pid), cpu_before, strict=True))
        rx_after = receiver_stats(port)
        return {
            "wall": wall,
            "cpu": user + system,
            "user": user,
            "system": system,
            "rss": peak_rss_mib(agent.pid),
            "receiver_cpu": rx_after["cpu_seconds"] - rx_before["cpu_seconds"],
            "requests": rx_after["requests"] - rx_before["requests"],
        }
    finally:
        agent.terminate()
        agent.wait(30)
        if spy is not None:
            spy.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--max-ratio", type=float, default=2.0)
    parser.add_argument(
        "--profile", type=Path, help="also record the agent with py-spy into this file"
    )
    args = parser.parse_args()
    count = args.events
    with tempfile.TemporaryDirectory(prefix="tailhook-bench-") as name:
        tmp = Path(name)
        log = tmp / "detections.log"
        size = write_lines(log, count)
        floor = measure_floor(log)
        spool_dir = tmp / "spool-alone"
        spool_dir.mkdir()
        keep, deliver = measure_spool(log, spool_dir)
        receiver = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("receiver.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            port = int(receiver.stdout.readline())
            result = run_agent(tmp, log, count, port, args.profile)
        finally:
            assert receiver.stdin is not None
            receiver.stdin.close()
            receiver.wait(10)
    per_event = result["cpu"] / count
    ratio = per_event / floor
    print(f"events:                 {count} hit lines, {size / count:.0f} bytes each")
    print(f"floor (in-process):     {floor * 1e6:.2f} µs CPU per event")
    print(
        f"durability (in-process): {(keep + deliver) * 1e6:.2f} µs CPU per event "
        f"(keep {keep * 1e6:.2f}, deliver and delete {deliver * 1e6:.2f})"
    )
    print(
        f"agent throughput:       {count / result['wall']:.0f} events/s "
        f"({result['wall']:.2f} s wall)"
    )
    print(
        f"agent CPU per event:    {per_event * 1e6:.2f} µs ({result['cpu']:.2f} s: "
        f"{result['user']:.2f} user, {result['system']:.2f} system)"
    )
    print(f"agent peak RSS:         {result['rss']:.1f} MiB")
    print(
        f"receiver CPU:           {result['receiver_cpu']:.2f} s over {result['wall']:.2f} s "
        f"wall ({100 * result['receiver_cpu'] / result['wall']:.0f}% of a core), "
        f"{result['requests']:.0f} requests"
    )
    print(f"ratio agent/floor:      {ratio:.2f} (target <= {args.max_ratio})")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
