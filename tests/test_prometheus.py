"""A real Prometheus (Debian's ``prometheus``) scraping the real ``tailhook run`` every
second, with deploy/prometheus's rules loaded, queried through its HTTP API:

- every series known at start is there at 0 before the first event, so the first
  rejected line fires ``TailhookRejectedLines`` and the first delivery shows in
  ``increase()`` (neither would, were the series born at 1);
- no ``*_created`` series; ``promtool check metrics`` is clean on ``/metrics``;
- every rule evaluates without error against the agent's real series;
- every Grafana dashboard query names metrics the agent exports and returns data.

One Prometheus and one agent for the module; everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import REJECT_REASONS
from agent.formats import EVENT_TYPES
from tests.agent_support import hit_line, wait_until
from tests.support.agent_process import REPO, AgentProcess, file_source_yaml
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

RULES = REPO / "deploy" / "prometheus" / "tailhook-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tailhook.json"


@dataclass
class Stack:
    agent: AgentProcess
    receiver: Receiver
    logs: Path
    prometheus: str  # base URL of its HTTP API

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian's prometheus package)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prometheus_config(target: str) -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "tailhook", "static_configs": [{"targets": [target]}]},
            ],
        }
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = find_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    logs = tmp / "logs"
    logs.mkdir()
    (logs / "waf.log").touch()
    with Receiver() as receiver:
        config = tmp / "tailhook.yaml"
        config.write_text(file_source_yaml(tmp / "state", receiver.url, [f"{logs}/*.log"]))
        with AgentProcess(config, tmp / "agent.log") as agent:
            target = agent.base.removeprefix("http://")
            (tmp / "prometheus.yml").write_text(prometheus_config(target))
            port = free_port()
            with (tmp / "prometheus.log").open("wb") as log:
                process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={tmp / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            try:
                stack = Stack(agent, receiver, logs, f"http://127.0.0.1:{port}")
                assert wait_until(lambda: scraped(stack, process), 60, interval=0.2), (
                    tmp / "prometheus.log"
                ).read_text()
                yield stack
            finally:
                process.terminate()
                process.wait(30)


def scraped(stack: Stack, process: subprocess.Popen[bytes]) -> bool:
    """Prometheus answers and has scraped the agent at least twice."""
    assert process.poll() is None, "prometheus exited"
    try:
        ready = requests.get(f"{stack.prometheus}/-/ready", timeout=5)
    except requests.ConnectionError:
        return False
    if ready.status_code != 200:  # still loading its storage: 503 "Service Unavailable"
        return False
    samples = stack.query('count_over_time(up{job="tailhook"}[1m])')
    return bool(samples) and float(samples[0]["value"][1]) >= 2


def values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(
            sorted((k, v) for k, v in s["metric"].items() if k not in ("job", "instance"))
        ): float(s["value"][1])
        for s in result
    }


def test_the_first_rejected_line_fires_an_alert_and_the_first_delivery_is_an_increase(
    stack: Stack,
) -> None:
    events = values(stack.query('tailhook_events_total{source="waf"}'))
    expected = {
        (
            ("__name__", "tailhook_events_total"),
            ("event_type", t),
            ("outcome", o),
            ("source", "waf"),
        )
        for t, o in [
            *((t, o) for t in EVENT_TYPES for o in ("accepted", "invalid_schema")),
            *(("unknown", o) for o in REJECT_REASONS),
        ]
    }
    assert set(events) == expected
    assert set(events.values()) == {0.0}
    delivered = values(stack.query('tailhook_webhook_events_delivered_total{webhook="soc"}'))
    assert len(delivered) == len(EVENT_TYPES) and set(delivered.values()) == {0.0}

    with (stack.logs / "waf.log").open("ab") as log:
        log.write(hit_line(1) + b"\n")
        log.write(b'{"event": "hit", "time": "not a time"}\n')
    assert stack.receiver.wait_for(1, 10)
    firing = 'ALERTS{alertname="TailhookRejectedLines", alertstate="firing"}'
    assert wait_until(lambda: bool(stack.query(firing)), 30, interval=0.2)
    (alert,) = stack.query(firing)
    assert (alert["metric"]["source"], alert["metric"]["outcome"]) == ("waf", "invalid_schema")
    increase = 'increase(tailhook_webhook_events_delivered_total{event_type="hit"}[1m])'
    assert wait_until(lambda: float(stack.query(increase)[0]["value"][1]) > 0, 30, interval=0.2)


def test_no_created_series_reach_prometheus(stack: Stack) -> None:
    assert stack.query('count({__name__=~".+_created"})') == []
    assert stack.query('count({__name__=~"tailhook_.+"})') != []


def test_promtool_check_metrics_is_clean(stack: Stack) -> None:
    text = requests.get(stack.agent.base + "/metrics", timeout=5).text
    done = subprocess.run(
        [find_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_every_rule_evaluates_against_the_agents_series(stack: Stack) -> None:
    def rules() -> list[dict[str, Any]]:
        body = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    assert wait_until(
        lambda: all(not r["lastEvaluation"].startswith("0001") for r in rules()), 30, interval=0.2
    )
    assert {r["name"]: (r["health"], r.get("lastError", "")) for r in rules()} == {
        r["name"]: ("ok", "") for r in rules()
    }
    assert len(rules()) >= 8


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variables = [
        v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    return exprs + variables


def as_query(expr: str) -> str:
    """A Grafana query as Prometheus would get it: every variable at "All"."""
    label_values = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
    if label_values:
        return f"count by ({label_values.group(2)}) ({label_values.group(1)})"
    return (
        expr.replace("$__rate_interval", "30s")
        .replace('"$source"', '".*"')
        .replace('"$webhook"', '".*"')
        .replace('"$job"', '".*"')
    )


def test_every_dashboard_query_names_exported_metrics_and_returns_data(stack: Stack) -> None:
    text = requests.get(stack.agent.base + "/metrics", timeout=5).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    queries = dashboard_queries()
    named = {name for q in queries for name in re.findall(r"\b(?:tailhook|process)_\w+", q)}
    assert named - exported == set()
    assert {"tailhook_events_total", "tailhook_webhook_request_duration_seconds_bucket"} <= named
    empty = [q for q in queries if not stack.query(as_query(q))]
    assert empty == []
