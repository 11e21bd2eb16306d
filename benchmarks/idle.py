"""CPU cost of an idle agent: ``tailhook run`` tailing N files that do not change.

For each watch mode (``auto``, which is inotify here, then ``poll``): N files of one hit
line each, a loopback receiver, ``tailhook run`` as a subprocess; once those N lines are
delivered it settles for ``--settle`` seconds, then its user+system CPU time
(``/proc/PID/stat``) is measured over ``--seconds`` seconds and printed as a percentage
of one core. The target is 1 % of a core with ``watch: auto``: the exit status is 1 above
it. ``watch: poll`` is printed beside it, against the same 1 %, for information (it stats
every file every second by design); ``--strict-poll`` makes it count too.
``--kubernetes`` adds a third run with the files laid out as on a Kubernetes node: each
in a directory of its own (``pods/N/0.log``), tailed through a directory of symlinks
(``containers/N.log``), so the agent also watches each target's directory.

Run: ``python benchmarks/idle.py [--files 100] [--seconds 30] [--settle 5]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agent_support import hit_line, received_ids
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

TARGET_PERCENT = 1.0


def measure(watch: str, files: int, settle: float, seconds: float, symlinks: bool = False) -> float:
    """Percent of one core the agent used over ``seconds`` once idle."""
    with tempfile.TemporaryDirectory(prefix="tailhook-idle-") as tmp, Receiver() as receiver:
        root = Path(tmp)
        logs = root / "logs"
        logs.mkdir()
        for n in range(files):
            target = logs / f"detections-{n:03d}.log"
            if symlinks:
                (root / "pods" / str(n)).mkdir(parents=True)
                (logs / f"detections-{n:03d}.log").symlink_to(root / "pods" / str(n) / "0.log")
                target = root / "pods" / str(n) / "0.log"
            target.write_bytes(hit_line(n) + b"\n")
        config = root / "config.yaml"
        config.write_text(
            file_source_yaml(
                root / "state", receiver.url, [f"{logs}/detections-*.log"], watch=watch
            )
        )
        with AgentProcess(config, root / "agent.log") as agent:
            delivered = receiver.wait_for(
                lambda reqs: len(set(received_ids([r.json() for r in reqs]))) >= files, 60
            )
            if not delivered:
                raise SystemExit(f"watch={watch}: the {files} initial lines were not delivered")
            time.sleep(settle)
            cpu_before, wall_before = agent.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            cpu_after, wall_after = agent.cpu_seconds(), time.monotonic()
            threads = len(list(Path(f"/proc/{agent.pid}/task").iterdir()))
            requests_idle = len(receiver.requests)
            agent.terminate()
        percent = 100.0 * (cpu_after - cpu_before) / (wall_after - wall_before)
        print(
            f"watch={watch:<5} files={files}{' behind symlinks' if symlinks else ''} "
            f"idle {wall_after - wall_before:.1f} s: "
            f"CPU {cpu_after - cpu_before:.2f} s = {percent:.2f} % of one core "
            f"(target {TARGET_PERCENT:.0f} %: {'OK' if percent <= TARGET_PERCENT else 'ABOVE'}); "
            f"{threads} threads; {requests_idle} requests in all"
        )
        return percent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--strict-poll", action="store_true", help="poll must meet 1 %% too")
    parser.add_argument("--kubernetes", action="store_true", help="also: files behind symlinks")
    args = parser.parse_args()
    auto = measure("auto", args.files, args.settle, args.seconds)
    poll = measure("poll", args.files, args.settle, args.seconds)
    failed = auto > TARGET_PERCENT or (args.strict_poll and poll > TARGET_PERCENT)
    if args.kubernetes:
        symlinked = measure("auto", args.files, args.settle, args.seconds, symlinks=True)
        failed = failed or symlinked > TARGET_PERCENT
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
