"""A minimal loopback webhook receiver for benchmarks, run as its own process.

It counts notifications without parsing them (it counts ``"object_type"`` keys), answers
200 at once, and reports its count and its own CPU time at ``GET /stats``, so a
benchmark can show the receiver was not the bottleneck.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = b'"object_type"'


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.bytes = 0


STATS = Stats()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with STATS.lock:
            STATS.events += body.count(MARK)
            STATS.requests += 1
            STATS.bytes += len(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with STATS.lock:
            body = json.dumps(
                {
                    "events": STATS.events,
                    "requests": STATS.requests,
                    "bytes": STATS.bytes,
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # runs until the benchmark closes our stdin


if __name__ == "__main__":
    main()
