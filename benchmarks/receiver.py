"""A minimal loopback webhook receiver for benchmarks, run as its own process.

It counts notifications without parsing them (it counts ``"object_type"`` keys), answers
200 at once, and reports its count and its own CPU time at ``GET /stats``, so a
benchmark can show the receiver was not the bottleneck.

``--status 503`` answers that status instead (a webhook that is down: the agent keeps a
backlog). ``--latency`` parses each body and, for every notification whose first id is
``t<CLOCK_MONOTONIC ns>`` (the writer's append time), records receipt minus append time
as it reads the body; ``GET /latencies`` returns them in nanoseconds. CLOCK_MONOTONIC is
one clock for every process on a Linux host, so the two times compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

MARK = b'"object_type"'


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.bytes = 0
        self.latencies: list[int] = []


STATS = Stats()
STATUS = 200
LATENCY = False


def latencies_of(body: bytes, received: int) -> list[int]:
    """Receipt minus append time (ns) of each notification stamped by the writer."""
    found = []
    for obj in orjson.loads(body):
        first = obj.get("id", [""])[0]
        if isinstance(first, str) and first.startswith("t"):
            found.append(received - int(first[1:]))
    return found


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received = time.monotonic_ns()
        latencies = latencies_of(body, received) if LATENCY else []
        with STATS.lock:
            STATS.events += body.count(MARK)
            STATS.requests += 1
            STATS.bytes += len(body)
            STATS.latencies.extend(latencies)
        self.send_response(STATUS)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with STATS.lock:
            if self.path == "/latencies":
                answer: object = STATS.latencies
            else:
                answer = {
                    "events": STATS.events,
                    "requests": STATS.requests,
                    "bytes": STATS.bytes,
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                }
            body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    global STATUS, LATENCY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--status", type=int, default=200, help="the status every POST gets")
    parser.add_argument("--latency", action="store_true", help="record append -> receipt")
    args = parser.parse_args()
    STATUS, LATENCY = args.status, args.latency
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # runs until the benchmark closes our stdin


if __name__ == "__main__":
    main()
