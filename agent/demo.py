"""``tailhook demo``: the whole agent on loopback, with no config and no root.

It writes sample detection lines (and one bad line) to a log file in a temporary
directory, runs the agent on it with an embedded loopback receiver as the webhook,
prints what the receiver got and where the metrics are, and stops cleanly.
``test_notifications`` (used by ``tailhook test-webhook``) lives here too, since both
are built from the same sample lines.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import generate_latest

from agent.config import (
    BatchConfig,
    Config,
    FileSourceConfig,
    LogConfig,
    MetricsConfig,
    WebhookConfig,
)
from agent.formats import MappingContext, load_format
from agent.formats.wallarm import envelope, vulnerability_fields
from agent.pipeline import decode_line
from agent.pipeline.routing import form_of
from agent.service import Agent
from agent.telemetry import setup_logging

SAMPLE_LINES = [
    b'{"event":"hit","time":"2020-06-04T09:02:47Z","logged_at":"2020-06-04T09:03:01Z",'
    b'"ids":["hits_production_6396_202006_v_1","vpuRfnIBVc0URvOZ6ALA"],"domain":"example.com",'
    b'"method":"GET","path":"/","point":["get","id"],"payloads":["\'or 1=1--"],'
    b'"attack_type":"sqli","block_status":"monitored","client":{"addr":"111.17.1.1",'
    b'"port":41616,"country":null,"datacenter":"unknown","tor":"none"},"response":{"status":404,'
    b'"length":345,"time_ms":257},"detection":{"anomality":0.9806949806949808,'
    b'"heur_distance":36.28571421111111,"probability":36.11111118571429,"stamps":[1173],'
    b'"regex":[]}}',
    b'{"event":"vulnerability","time":"2020-06-04T09:10:00Z","id":282157,"title":"Missing '
    b"\\\"Strict-Transport-Security\\\" header in server's response at '93.184.216.34:443'\","
    b'"target":"93.184.216.34:443","vuln_type":"Info","domain":"www.example.com",'
    b'"threat":"Low"}',
    b'{"event":"system","time":"2020-06-04T09:11:00Z","action":"create_user","actor":{"name":'
    b'"John Doe","email":"johndoe@example.com"},"user":{"name":"John Smith","email":'
    b'"johnsmith@example.com","role":"analyst"}}',
    b'{"event":"scope","time":"2020-06-04T09:12:00Z","change":"added","kind":"ip",'
    b'"values":["8.8.8.8"]}',
]
BAD_LINE = b'{"event":"hit","time":"not a time"}'
TEST_PREFIX = "[Test message] "


def test_notifications(config: Config, hook: WebhookConfig) -> bytes:
    """One notification of each type ``hook`` takes, in its payload (its ``body``
    aside: a test is always a JSON array, as Wallarm's are).

    Every summary is prefixed with ``[Test message] ``: with ``payload: wallarm``, each
    envelope's; with ``classic``, each object's that has one. The classic hit has no
    summary field (Wallarm's hit has exactly its listed fields), so its ``id`` (in
    either payload) says it is a test too.
    """
    fmt = load_format("native")
    ctx = MappingContext(console_url=config.console_url)
    form = form_of(config, hook)
    objects: list[dict[str, Any]] = []
    for line in SAMPLE_LINES:
        obj = decode_line(line)
        kind, notification = fmt.convert(obj, ctx)
        if kind not in hook.events or notification is None:
            continue
        if kind == "hit":
            notification["id"] = ["tailhook-test-message"]
        if form.identity is not None:
            fields = vulnerability_fields(obj) if kind == "vulnerability" else None
            notification = envelope(notification, form.identity, fields)
        if "summary" in notification:
            notification["summary"] = TEST_PREFIX + notification["summary"]
        objects.append(notification)
    return orjson.dumps(objects)


class DemoReceiver(ThreadingHTTPServer):
    """A loopback webhook receiver that keeps what it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self.serve_forever, name="demo-receiver", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.received) >= count, timeout)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: DemoReceiver
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        objects = json.loads(body)
        with self.server.changed:
            for obj in objects:
                self.server.received.append(obj)
                print(
                    f"  receiver got {obj['object_type']:<13} (webhook-id "
                    f"{self.headers['webhook-id']}): {_one_line(obj)}"
                )
            self.server.changed.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo prints what matters itself."""


def _one_line(obj: dict[str, Any]) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    return text if len(text) <= 140 else text[:137] + "..."


def run_demo(linger: float = 0.0) -> int:
    setup_logging("warning", "text")
    with tempfile.TemporaryDirectory(prefix="tailhook-demo-") as tmp:
        root = Path(tmp)
        log_file = root / "logs" / "detections.log"
        log_file.parent.mkdir()
        log_file.touch()
        receiver = DemoReceiver()
        config = Config(
            state_dir=root / "state",
            metrics=MetricsConfig(host="127.0.0.1", port=0),
            log=LogConfig(level="warning", format="text"),
            sources=(FileSourceConfig(name="demo", paths=(str(log_file),)),),
            webhooks=(
                WebhookConfig(
                    name="demo-receiver",
                    url=receiver.url,
                    events=frozenset({"hit", "vulnerability", "system", "scope"}),
                    batch=BatchConfig(max_wait=0.1),
                ),
            ),
            shutdown_timeout=2.0,
        )
        agent = Agent(config)
        agent.start()
        assert agent.server is not None
        metrics_url = f"http://127.0.0.1:{agent.server.port}/metrics"
        print(f"tailhook demo: tailing {log_file}")
        print(f"  webhook receiver: {receiver.url}")
        print(f"  metrics:          {metrics_url}  (also /healthz and /readyz)")
        print("  writing 4 detection lines and 1 invalid line...")
        with log_file.open("ab") as out:
            for line in [*SAMPLE_LINES[:2], BAD_LINE, *SAMPLE_LINES[2:]]:
                out.write(line + b"\n")
                out.flush()
                time.sleep(0.05)
        ok = receiver.wait_for(len(SAMPLE_LINES), timeout=15)
        time.sleep(0.3)
        print(
            f"  receiver got {len(receiver.received)} notifications"
            f"{'' if ok else ' (fewer than expected)'}"
        )
        rejected = config.state_dir / "rejected" / "demo.jsonl"
        if rejected.exists():
            print(f"  the invalid line was rejected and kept in {rejected.name}:")
            print("    " + rejected.read_text().splitlines()[0][:160])
        print("  metrics now:")
        for metric in _interesting_metrics(agent):
            print("    " + metric)
        if linger > 0:
            print(f"  lingering {linger:g}s; try: curl {metrics_url}")
            time.sleep(linger)
        agent.stop()
        receiver.stop()
    print("tailhook demo: done")
    sys.stdout.flush()
    return 0 if ok else 1


def _interesting_metrics(agent: Agent) -> list[str]:
    text = generate_latest(agent.registry).decode()
    keep = (
        "tailhook_events_total",
        "tailhook_webhook_requests_total",
        "tailhook_webhook_events_delivered_total",
        "tailhook_source_lines_total",
    )
    return [line for line in text.splitlines() if line.startswith(keep)]
