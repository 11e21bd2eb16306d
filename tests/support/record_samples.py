"""Record a real node's JSON audit log lines for the mapping's unit tests.

    python -m tests.support.record_samples apache tests/data/modsecurity

starts the node (`tests.support.waf`) once blocking and once detecting only, sends it
`tests.support.attacks.PROBES` and writes what it logged to ``KIND-blocked.jsonl`` and
``KIND-monitored.jsonl`` in the directory, one line per request, in the order sent (the
readiness request left out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tests.support.attacks import probes_for, send
from tests.support.waf import Engine, Kind, WafNode, logged_path


def record(kind: Kind, engine: Engine, prefix: str) -> list[bytes]:
    """The audit log lines of one node for every probe, in the order the probes were sent."""
    with WafNode(kind, engine) as node:
        paths = [send(node, probe, prefix).path for probe in probes_for(node)]
        node.wait_for_paths(paths)
        lines = node.audit_log.read_bytes().splitlines()
    by_path: dict[str, bytes] = {}
    for line in lines:
        entry: dict[str, Any] = json.loads(line)
        by_path[logged_path(entry)] = line
    return [by_path[path] for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["nginx", "apache"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    modes: tuple[tuple[Engine, str], ...] = (("On", "blocked"), ("DetectionOnly", "monitored"))
    for engine, status in modes:
        lines = record(args.kind, engine, status)
        target = args.directory / f"{args.kind}-{status}.jsonl"
        target.write_bytes(b"".join(line + b"\n" for line in lines))
        print(f"{target}: {len(lines)} lines")


if __name__ == "__main__":
    main()
