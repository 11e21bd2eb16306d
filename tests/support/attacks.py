"""The requests the WAF end-to-end tests send a real node, and what each hit must say.

`PROBES` holds attacks of several CRS families (942 sqli, 941 xss, 930 path traversal,
932 rce, 913 scanner user agent), attacks in a header, a cookie, a form body and a JSON
body, one from ::1, and clean requests, interleaved and ending with an attack. Each
request's path is unique (``/MODE-NAME``, a page the node serves), so its hit is found by
``path``.

`deliver` sends them all and returns once the agent has delivered everything the node
logged for them: it waits until the node's audit log holds a line for every request
before sending the last one, so that last attack's line is the last line of the log;
its hit arriving proves every earlier line was read and mapped (the agent delivers a
webhook's events in the order it read them). `check_hits` then asserts exactly one hit
per attack, with the expected fields, and none for a clean request; `read_everything`
that the agent accepted every line the nodes wrote and rejected none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.schemas import python_validator
from tests.agent_support import wait_until
from tests.support.agent_process import AgentProcess, file_source_yaml
from tests.support.receiver import Receiver, RecordedRequest
from tests.support.waf import HOST, Response, WafNode

FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON = ("Content-Type", "application/json")


@dataclass(frozen=True)
class Probe:
    """One request; ``attack`` is False for a clean one."""

    name: str
    attack: bool
    method: str = "GET"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    client: str = "127.0.0.1"


@dataclass(frozen=True)
class Expected:
    """What an attack's hit must say."""

    type: str
    point: list[str]
    parameter: str
    payloads: list[str]


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


PROBES = [
    Probe("xss", True, query="q=" + quote("<script>alert(1)</script>")),
    Probe("clean-get", False, query="q=red+shoes&page=2"),
    Probe("ptrav", True, query="file=" + quote("../../../../etc/passwd")),
    Probe("rce", True, query="host=" + quote("127.0.0.1;cat /etc/passwd")),
    Probe("clean-form", False, "POST", headers=(FORM,), body=b"name=alice&note=fine"),
    Probe("scanner", True, headers=(("User-Agent", "Mozilla/5.00 (Nikto/2.1.6)"),)),
    Probe("header", True, headers=(("Referer", "<script>alert(1)</script>"),)),
    Probe("clean-json", False, "POST", headers=(JSON,), body=_json({"q": "shoes", "page": 2})),
    Probe("cookie", True, headers=(("Cookie", "session=' or 1=1--"),)),
    Probe("form", True, "POST", headers=(FORM,), body=b"username=admin%27+or+%271%27%3D%271"),
    Probe("clean-cookie", False, headers=(("Cookie", "session=abc123; theme=dark"),)),
    Probe("json", True, "POST", headers=(JSON,), body=_json({"q": "<script>alert(1)</script>"})),
    Probe("ipv6", True, query="id=" + quote("1' UNION SELECT password FROM users--"), client="::1"),
    Probe("clean-ipv6", False, query="q=hello", client="::1"),
    Probe("sqli", True, query="id=" + quote("'or 1=1--")),  # last: see the module doc
]

#: What both ModSecurity 2 and 3 log alike; each test module adds its own differences.
COMMON_EXPECTED = {
    "sqli": Expected("sqli", ["get", "id"], "GET_id_value", ["'or 1=1--"]),
    "xss": Expected("xss", ["get", "q"], "GET_q_value", ["<script>alert(1)</script>"]),
    "ptrav": Expected("ptrav", ["get", "file"], "GET_file_value", ["../../../../etc/passwd"]),
    # CRS 932160 logs the value after its transformations: a second payload
    "rce": Expected(
        "rce",
        ["get", "host"],
        "GET_host_value",
        ["127.0.0.1;cat /etc/passwd", "127.0.0.1 cat/etc/passwd"],
    ),
    # CRS lower-cases a header before matching; the payload is the header as it was sent
    "scanner": Expected(
        "scanner",
        ["header", "USER-AGENT"],
        "HEADER_USER-AGENT_value",
        ["Mozilla/5.00 (Nikto/2.1.6)"],
    ),
    "header": Expected(
        "xss", ["header", "REFERER"], "HEADER_REFERER_value", ["<script>alert(1)</script>"]
    ),
    "cookie": Expected(
        "sqli",
        ["header", "COOKIE", "cookie", "session"],
        "HEADER_COOKIE_cookie_session_value",
        ["' or 1=1--"],
    ),
    "form": Expected("sqli", ["post", "username"], "POST_username_value", ["admin' or '1'='1"]),
    "ipv6": Expected(
        "sqli", ["get", "id"], "GET_id_value", ["1' UNION SELECT password FROM users--"]
    ),
}


def probes_for(node: WafNode) -> list[Probe]:
    """The probes this node can be sent (the ::1 ones only where the machine has ::1)."""
    return [probe for probe in PROBES if probe.client == "127.0.0.1" or node.ipv6]


def send(node: WafNode, probe: Probe, prefix: str) -> Response:
    path = node.page(f"{prefix}-{probe.name}")
    target = f"{path}?{probe.query}" if probe.query else path
    return node.request(probe.method, target, probe.headers, probe.body, probe.client)


def hits_by_path(requests: list[RecordedRequest]) -> dict[str, list[dict[str, Any]]]:
    """Every hit notification the receiver got, grouped by its ``path``."""
    found: dict[str, list[dict[str, Any]]] = {}
    for request in requests:
        for notification in request.json():
            if notification["object_type"] == "hit":
                found.setdefault(notification["path"], []).append(notification)
    return found


def deliver(
    node: WafNode, receiver: Receiver, prefix: str
) -> tuple[dict[str, Response], dict[str, list[dict[str, Any]]]]:
    """Send every probe; return what the client saw of each, and the hits by path."""
    probes = probes_for(node)
    *before, last = probes
    assert last.attack
    responses = {probe.name: send(node, probe, prefix) for probe in before}
    node.wait_for_paths(response.path for response in responses.values())
    responses[last.name] = send(node, last, prefix)
    node.wait_for_paths([responses[last.name].path])
    last_path = responses[last.name].path
    delivered = receiver.wait_for(lambda requests: last_path in hits_by_path(requests), 20.0)
    assert delivered, f"no hit for {last_path}; got {sorted(hits_by_path(receiver.requests))}"
    return responses, hits_by_path(receiver.requests)


def check_hits(
    node: WafNode,
    responses: Mapping[str, Response],
    hits: Mapping[str, list[dict[str, Any]]],
    expected: Mapping[str, Expected],
) -> None:
    """One hit per attack with the expected fields; none for a clean request."""
    blocking = node.engine == "On"
    for probe in probes_for(node):
        response = responses[probe.name]
        found = hits.get(response.path, [])
        if not probe.attack:
            assert found == [], f"{probe.name}: a clean request was reported: {found}"
            assert response.status != 403, f"{probe.name}: {node.kind} blocked a clean request"
            continue
        assert len(found) == 1, f"{probe.name}: {len(found)} hits: {found}"
        hit, want = found[0], expected[probe.name]
        assert response.status == 403 if blocking else response.status != 403, probe.name
        v6 = probe.client == "::1"
        fields = {
            "type": hit["type"],
            "point": hit["point"],
            "parameter": hit["parameter"],
            "payloads": hit["payloads"],
            "block_status": hit["block_status"],
            "remote_addr4": hit["remote_addr4"],
            "remote_addr6": hit["remote_addr6"],
            "remote_port": hit["remote_port"],
            "response_status": hit["response_status"],
            "response_len": hit["response_len"],
            "method": hit["method"],
            "domain": hit["domain"],
        }
        wanted = {
            "type": want.type,
            "point": want.point,
            "parameter": want.parameter,
            "payloads": want.payloads,
            "block_status": "blocked" if blocking else "monitored",
            "remote_addr4": None if v6 else "127.0.0.1",
            "remote_addr6": "::1" if v6 else None,
            "remote_port": response.client_port,
            "response_status": response.status,
            "response_len": response.content_length,
            "method": probe.method,
            "domain": HOST,
        }
        assert fields == wanted, f"{probe.name}: got {fields}, wanted {wanted}"
        assert abs(hit["request_time"] - response.sent_at) <= 2, (probe.name, hit, response)
        assert hit["stamps"] and hit["id"][0], (probe.name, hit)


@contextmanager
def tailhook_tailing(nodes: list[WafNode], home: Path) -> Iterator[tuple[AgentProcess, Receiver]]:
    """One ``tailhook run`` tailing the nodes' audit logs, delivering to one receiver."""
    with Receiver() as receiver:
        logs = [str(node.audit_log) for node in nodes]
        config = home / "config.yaml"
        config.write_text(
            file_source_yaml(home / "state", receiver.url, logs, format="modsecurity")
        )
        with AgentProcess(config, home / "agent.log") as agent:
            yield agent, receiver
            assert agent.terminate() == 0


def read_everything(agent: AgentProcess, nodes: list[WafNode]) -> None:
    """Every line the nodes wrote was read and accepted as a valid hit line, none rejected."""
    lines = sum(node.audit_line_count() for node in nodes)
    labels = {"source": "waf", "event_type": "hit"}

    def accepted() -> float | None:
        return agent.metric("tailhook_events_total", **labels, outcome="accepted")

    assert wait_until(lambda: accepted() == lines, 10), (accepted(), lines)
    rejected = agent.metric("tailhook_events_total", **labels, outcome="invalid_schema")
    assert not rejected, agent.log_since()[-3000:]


def valid_hits(hits: Mapping[str, list[dict[str, Any]]]) -> None:
    """Every hit holds to the hit notification schema."""
    validator = python_validator("notification-hit")
    for found in hits.values():
        for hit in found:
            validator.validate(hit)
