"""Every label of every tailhook metric comes from a closed set (README, "Metrics and
health"): source and webhook names from the config, event types, outcomes, reasons,
HTTP statuses or timeout/tls/connection. Never a path, an address or anything a line
carries, whatever the agent meets: odd file names, a file it cannot open, lines naming
unknown events, webhooks that refuse, fail or cannot be reached.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from tests.agent_support import file_config, hit_line, running_agent, wait_until
from tests.support.receiver import Receiver, sequence

CLOSED_SETS = {
    "source": {"waf"},
    "webhook": {"soc", "picky", "down"},
    "event_type": {"hit", "vulnerability", "system", "scope", "unknown"},
    "outcome": {
        "accepted",
        "invalid_encoding",
        "invalid_json",
        "invalid_schema",
        "unknown_event",
        "line_too_long",
    },
    "reason": {"permission", "not_found", "io", "rejected", "expired", "deleted", "disabled"},
    "version": {__version__},
    "result": {"success", "failure"},
}
CODE = re.compile(r"[1-5][0-9][0-9]|timeout|tls|connection")


def label_problems(text: str) -> list[str]:
    """Each label of a tailhook_* sample that is not from its closed set."""
    problems = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tailhook_"):
            continue  # the client library's process_* and python_*
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name == "code":
                    allowed = bool(CODE.fullmatch(value))
                elif name == "le":  # a histogram bucket's bound
                    allowed = value == "+Inf" or re.fullmatch(r"[0-9.e+-]+", value) is not None
                else:
                    allowed = value in CLOSED_SETS.get(name, set())
                if not allowed:
                    problems.append(f"{sample.name}{{{name}={value!r}}}")
    return problems


def test_every_label_comes_from_a_closed_set(tmp_path: Path, closed_port: int) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    odd = logs / "a b'\"é 127.0.0.1.log"
    odd.write_bytes(
        hit_line(1)
        + b'\nnot json\n{"event":"/etc/passwd"}\n{"event":"hit"}\n\xff\n'
        + b"x" * 2000
        + b"\n"
    )
    (logs / "gone.log").symlink_to(logs / "nowhere")  # cannot be opened: not_found
    with Receiver(sequence(503, then=200)) as soc, Receiver(400) as picky:
        base = file_config(tmp_path, soc.url, (f"{logs}/*.log",), max_line_bytes=1024)
        hook = base.webhooks[0]
        config = replace(
            base,
            webhooks=(
                hook,
                replace(hook, name="picky", url=picky.url),
                replace(hook, name="down", url=f"http://127.0.0.1:{closed_port}/hook"),
            ),
        )
        with running_agent(config) as agent:
            assert agent.server is not None
            url = f"http://127.0.0.1:{agent.server.port}/metrics"

            def sample(name: str, **labels: str) -> float:
                return agent.registry.get_sample_value(name, labels) or 0.0

            # Everything the labels could come from has happened.
            assert wait_until(
                lambda: (
                    sample(
                        "tailhook_webhook_events_delivered_total", webhook="soc", event_type="hit"
                    )
                    == 1
                    and sample(
                        "tailhook_webhook_events_dead_lettered_total",
                        webhook="picky",
                        reason="rejected",
                    )
                    == 1
                    and sample("tailhook_webhook_retries_total", webhook="down") >= 1
                    and sample("tailhook_source_errors_total", source="waf", reason="not_found")
                    >= 1
                ),
                10,
            )
            text = requests.get(url, timeout=5).text
    outcomes = {
        s.labels["outcome"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "tailhook_events_total" and s.value
    }
    assert outcomes == CLOSED_SETS["outcome"]  # every kind of line was met
    assert label_problems(text) == []


def test_label_sets_known_at_start_are_exported_at_0(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "detections.log"
    log.touch()  # nothing read, nothing sent: every sample below can only be a 0 from the start
    with running_agent(file_config(tmp_path, receiver.url, (str(log),))) as agent:
        assert agent.server is not None
        text = requests.get(f"http://127.0.0.1:{agent.server.port}/metrics", timeout=5).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def exported(name: str, **labels: str) -> bool:
        return any(
            s.name == name and s.value == 0 and all(s.labels.get(k) == v for k, v in labels.items())
            for s in samples
        )

    missing = [
        f"tailhook_events_total{{outcome={outcome}}}"
        for outcome in sorted(CLOSED_SETS["outcome"])
        if not exported("tailhook_events_total", source="waf", outcome=outcome)
    ] + [
        f"tailhook_webhook_events_delivered_total{{event_type={kind}}}"
        for kind in ("hit", "vulnerability", "system", "scope")
        if not exported("tailhook_webhook_events_delivered_total", webhook="soc", event_type=kind)
    ]
    assert exported("tailhook_source_errors_total", source="waf", reason="permission")
    assert missing == []
